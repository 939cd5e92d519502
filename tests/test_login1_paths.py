"""Object paths as logind escapes them, and bus addresses (pure functions
of turnstiled/login1/)."""

from __future__ import annotations

import socket

from turnstiled.login1 import address, paths


def test_labels_escape_as_sd_bus_does():
    # Examples whose escaped form logind uses on every system.
    assert paths.session_path("1") == "/org/freedesktop/login1/session/_31"
    assert paths.session_path("12") == "/org/freedesktop/login1/session/_312"
    assert paths.session_path("c1") == "/org/freedesktop/login1/session/c1"
    assert paths.seat_path("seat0") == "/org/freedesktop/login1/seat/seat0"
    assert paths.user_path(1000) == "/org/freedesktop/login1/user/_1000"
    assert paths.escape("") == "_"
    assert paths.escape("a-b_c") == "a_2db_5fc"
    assert paths.escape("é") == "_c3_a9"
    for label in ("", "1", "seat-1", "a_b", "é", "x" * 40):
        assert paths.unescape(paths.escape(label)) == label


def test_paths_parse_back():
    assert paths.parse("/org/freedesktop/login1") == ("manager", "")
    assert paths.parse("/org/freedesktop/login1/session/_312") == ("session", "12")
    assert paths.parse("/org/freedesktop/login1/session/self") == ("session", "self")
    assert paths.parse("/org/freedesktop/login1/user/_1000") == ("user", "1000")
    assert paths.parse("/org/freedesktop/login1/user/auto") == ("user", "auto")
    assert paths.parse("/org/freedesktop/login1/seat/seat0") == ("seat", "seat0")
    for bad in ("/org/freedesktop/login1/user/1000", "/org/freedesktop/login1/session/_3",
                "/org/freedesktop/login1/session/_zz", "/org/freedesktop/login1/session/a.b",
                "/org/freedesktop/login1/other/x", "/org/freedesktop/login1/session/_2f"):
        assert paths.parse(bad) is None, bad


def test_bus_addresses(tmp_path, monkeypatch):
    monkeypatch.delenv("DBUS_SYSTEM_BUS_ADDRESS", raising=False)
    assert address.system_bus_address("") == "unix:path=/run/dbus/system_bus_socket"
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/x")
    assert address.system_bus_address("") == "unix:path=/x"
    assert address.system_bus_address("unix:path=/y") == "unix:path=/y"
    assert address.unix_targets("unix:path=/a%20b,guid=00;unix:abstract=q;tcp:host=h") == \
        ["/a b", "\0q"]
    missing = tmp_path / "none.sock"
    assert "No such file" in address.reachable(f"unix:path={missing}")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(tmp_path / "bus.sock"))
    listener.listen(1)
    try:
        assert address.reachable(f"unix:path={missing};unix:path={tmp_path}/bus.sock") is None
    finally:
        listener.close()
