"""turnstiled: login session tracker and per-user service manager launcher.

The daemon keeps every module it imports for its whole life, so what it
imports is chosen: not asyncio (turnstiled/loop.py says why), not typing
(0.5 MB: modules set their own `TYPE_CHECKING = False`, which type
checkers read as typing's), not argparse (__main__.py parses by hand).
"""

__version__ = "0.1.0"
# The admin socket's protocol version (doc/admin-protocol.md): turnstilectl
# and the daemon must agree on it.
ADMIN_PROTOCOL = 1
