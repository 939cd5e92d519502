"""The syslog handler, against a real datagram socket standing in for /dev/log."""

from __future__ import annotations

import logging
import socket

from turnstiled.log import SyslogHandler


def test_records_reach_syslog_as_syslog3_sends_them(tmp_path):
    path = str(tmp_path / "log")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    server.settimeout(5)
    handler = SyslogHandler(path)
    handler.setFormatter(logging.Formatter("turnstiled[1]: %(message)s"))
    logger = logging.getLogger("turnstiled-test-syslog")
    logger.addHandler(handler)
    try:
        logger.warning("user %s", "x")
        logger.error("bad")
        assert server.recv(4096) == b"<28>turnstiled[1]: user x"  # daemon.warning
        assert server.recv(4096) == b"<27>turnstiled[1]: bad"  # daemon.err
        server.close()  # syslog gone: logging goes on without an error
        logger.error("nobody listens")
    finally:
        logger.removeHandler(handler)
        handler.close()
