"""What test_dinit.py imports from here, until it imports them from
helpers.py: nothing else should."""

from helpers import procs_of, wait_for

__all__ = ["procs_of", "wait_for"]
