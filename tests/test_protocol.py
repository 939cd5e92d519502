"""The wire protocol: round trips, every bound, truncated and oversized input."""

import struct

import pytest

from turnstiled import protocol as p
from turnstiled.protocol import FIELDS, Handshake, HandshakeDecoder, ProtocolError

FULL = Handshake(uid=1000, vtnr=7, remote=True, service="sshd", type="tty", klass="user",
                 desktop="GNOME", seat="seat0", tty="pts/3", display=":1",
                 remote_user="alice", remote_host="example.org")


def test_round_trip_in_one_piece():
    assert HandshakeDecoder().feed(p.encode_handshake(FULL)) == FULL


def test_round_trip_byte_by_byte():
    data = p.encode_handshake(FULL)
    dec = HandshakeDecoder()
    for i, b in enumerate(data):
        out = dec.feed(bytes([b]))
        assert (out is None) == (i < len(data) - 1)
        if i >= 4:
            assert dec.uid == 1000  # known early, so the peer can be checked
    assert out == FULL


def test_layout_is_native():
    data = p.encode_handshake(FULL)
    assert data[0] == p.MSG_START
    assert struct.unpack_from("@I", data, 1) == (1000,)
    off = 1 + struct.calcsize("@I")
    assert struct.unpack_from("@L", data, off) == (7,)
    off += struct.calcsize("@L")
    assert data[off] == 1
    assert struct.unpack_from("@N", data, off + 1) == (4,)
    assert data[off + 1 + struct.calcsize("@N"):][:4] == b"sshd"


def _raw(lengths, strings=None, head=None):
    """A handshake with chosen lengths (to break bounds)."""
    out = head if head is not None else bytes([5]) + struct.pack("@I", 0) + \
        struct.pack("@L", 0) + b"\0"
    for i, n in enumerate(lengths):
        s = strings[i] if strings else b"x" * n
        out += struct.pack("@N", n) + s
    return out


def _valid_lengths():
    return [max(lo, 1) if hi else 0 for _, lo, hi in FIELDS]


@pytest.mark.parametrize("index", range(len(FIELDS)))
def test_every_bound(index):
    name, lo, hi = FIELDS[index]
    lengths = _valid_lengths()
    lengths[index] = hi
    assert HandshakeDecoder().feed(_raw(lengths)) is not None
    lengths[index] = hi + 1
    with pytest.raises(ProtocolError, match=name):
        HandshakeDecoder().feed(_raw(lengths))
    if lo:
        lengths[index] = lo - 1
        with pytest.raises(ProtocolError, match=name):
            HandshakeDecoder().feed(_raw(lengths))


def test_huge_length_is_refused_before_buffering():
    head = bytes([5]) + struct.pack("@I", 0) + struct.pack("@L", 0) + b"\0"
    with pytest.raises(ProtocolError, match="service"):
        HandshakeDecoder().feed(head + struct.pack("@N", 2**63))


def test_wrong_first_byte():
    for b in (0, 1, 3, 6, 255):
        with pytest.raises(ProtocolError, match="START"):
            HandshakeDecoder().feed(bytes([b]))


def test_bad_bool_nul_and_utf8():
    head = bytes([5]) + struct.pack("@I", 0) + struct.pack("@L", 0)
    with pytest.raises(ProtocolError, match="remote"):
        HandshakeDecoder().feed(head + b"\x02")
    lengths = _valid_lengths()
    strings = [b"x" * n for n in lengths]
    strings[0] = b"\0"
    with pytest.raises(ProtocolError, match="NUL"):
        HandshakeDecoder().feed(_raw(lengths, strings))
    strings[0] = b"\xff"
    with pytest.raises(ProtocolError, match="UTF-8"):
        HandshakeDecoder().feed(_raw(lengths, strings))


def test_truncated_input_waits_and_extra_input_fails():
    data = p.encode_handshake(FULL)
    dec = HandshakeDecoder()
    assert dec.feed(data[:-1]) is None
    with pytest.raises(ProtocolError, match="after the handshake"):
        HandshakeDecoder().feed(data + b"\3")


def test_encoder_refuses_out_of_bounds():
    with pytest.raises(ProtocolError):
        p.encode_handshake(Handshake(0, 0, False, "", "tty", "user"))
    with pytest.raises(ProtocolError):
        p.encode_handshake(Handshake(0, 0, False, "s" * 65, "tty", "user"))


def test_env_round_trip_and_errors():
    env = {"XDG_RUNTIME_DIR": "/run/user/1000", "DBUS_SESSION_BUS_ADDRESS": "unix:path=/x=y"}
    data = p.encode_env(env)
    assert data[0] == p.MSG_ENV and p.decode_env(data) == env
    assert p.decode_env(p.encode_env({})) == {}
    with pytest.raises(ProtocolError):
        p.decode_env(data[:-1])
    with pytest.raises(ProtocolError):
        p.decode_env(bytes([4]) + struct.pack("@I", p.MAX_ENV + 1))
    with pytest.raises(ProtocolError):
        p.decode_env(bytes([4]) + struct.pack("@I", 4) + b"abc\0")
