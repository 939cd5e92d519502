"""turnstiled: login session tracker and per-user service manager launcher."""

__version__ = "0.1.0"
# The admin socket's protocol version (doc/admin-protocol.md): turnstilectl
# and the daemon must agree on it.
ADMIN_PROTOCOL = 1
