"""Text from users, made safe to show: one line, no terminal controls."""

from __future__ import annotations


def escape(text: str) -> str:
    """text with control characters and Unicode line and paragraph breaks
    as \\xNN or \\uNNNN, and a backslash doubled: safe for one line of a log,
    a state file or a terminal."""
    if text.isprintable() and "\\" not in text:
        return text
    out = []
    for ch in text:
        if ch == "\\":
            out.append("\\\\")
        elif ch.isprintable():
            out.append(ch)
        elif ord(ch) < 0x100:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(f"\\u{ord(ch):04x}")
    return "".join(out)
