"""turnstiled: login session tracker and per-user service manager launcher."""

__version__ = "0.1.0"
