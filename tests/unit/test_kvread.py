"""The gRPC read of a seed record against answers real etcd cannot be made to give: a socket pair stands in for the
TLS connection (TLS adds nothing to the framing), and the peer writes whatever frames a lying member would. The
honest read against real etcd, with and without auth, is in tests/etcd/test_status.py."""

from __future__ import annotations

import socket
import threading

import pytest

from generator import kvread
from generator.kvread import DATA, END_HEADERS, END_STREAM, GOAWAY, HEADERS, PADDED, PING, RST_STREAM, SETTINGS

KEY = b"/etcd-seed/seed/etcd01"
VALUE = b"etcd01-0123456789abcdef"


def frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


def field(number: int, payload: bytes) -> bytes:
    return kvread._varint(number << 3 | 2) + kvread._varint(len(payload)) + payload


def grpc(message: bytes, flag: int = 0) -> bytes:
    return bytes([flag]) + len(message).to_bytes(4, "big") + message


def range_response(*pairs: tuple[bytes, bytes]) -> bytes:
    header = field(1, b"\x08\x01")  # ResponseHeader{cluster_id: 1}
    return header + b"".join(field(2, field(1, k) + b"\x10\x05" + field(5, v)) for k, v in pairs)


def answer(body: bytes) -> bytes:
    """What etcd sends: SETTINGS, the response headers (opaque here), the message, the trailers."""
    return (frame(SETTINGS, 0, 0, b"\x00\x03\x00\x00\x00\x64") + frame(HEADERS, END_HEADERS, 1, b"\x88")
            + frame(DATA, 0, 1, body) + frame(HEADERS, END_HEADERS | END_STREAM, 1, b"\x40\x00"))


def serve(payload: bytes) -> tuple[bytes | None, bytes]:
    """Read KEY through one end of a socket pair while the other sends `payload`; what the client sent too."""
    client, server = socket.socketpair()
    client.settimeout(5)
    sent = bytearray()

    def peer() -> None:
        server.settimeout(5)
        server.sendall(payload)
        server.shutdown(socket.SHUT_WR)  # a member that has said all it will
        try:
            while chunk := server.recv(65536):
                sent.extend(chunk)
        except OSError:
            pass

    thread = threading.Thread(target=peer)
    thread.start()
    try:
        value = kvread.get(client, "10.0.0.1:2379", KEY)
    finally:
        client.close()
        thread.join()
        server.close()
    return value, bytes(sent)


def test_an_honest_answer_gives_the_value_and_the_request_is_grpc() -> None:
    value, sent = serve(answer(grpc(range_response((KEY, VALUE)))))
    assert value == VALUE
    assert sent.startswith(kvread.PREFACE)
    assert b"/etcdserverpb.KV/Range" in sent and b"application/grpc" in sent
    assert grpc(b"\x0a" + bytes([len(KEY)]) + KEY) in sent  # RangeRequest{key}
    assert frame(SETTINGS, 1, 0, b"") in sent  # the server's SETTINGS acknowledged


def test_no_such_key_is_none_and_a_ping_is_answered() -> None:
    ping = frame(PING, 0, 0, b"12345678")
    value, sent = serve(ping + answer(grpc(range_response())))
    assert value is None and frame(PING, 1, 0, b"12345678") in sent


def test_padding_is_removed_from_data() -> None:
    body = grpc(range_response((KEY, VALUE)))
    padded = bytes([3]) + body + b"\x00\x00\x00"
    value, _ = serve(frame(DATA, PADDED | END_STREAM, 1, padded))
    assert value == VALUE


def test_a_grpc_error_has_no_value() -> None:
    with pytest.raises(kvread.NoValue):
        serve(frame(HEADERS, END_HEADERS | END_STREAM, 1, b"\x88"))


LIES: dict[str, tuple[bytes, type[Exception], str]] = {
    "frame over 16 KiB": (frame(DATA, 0, 1, b"x" * 16385), kvread.Malformed, "HTTP/2 frame of 16385 bytes"),
    "endless frames": (frame(DATA, 0, 1, b"") * 100, kvread.Malformed, "more than 64 HTTP/2 frames"),
    "too much data": (frame(DATA, 0, 1, b"\x00" + b"x" * 16383) * 5, kvread.Malformed, "more than 4 KiB"),
    # Refused on its length prefix: the rest would wait on a flow-control window this client never widens.
    "message over 4 KiB": (frame(DATA, 0, 1, grpc(b"x" * 70000)[:5]), kvread.Malformed, "more than 4 KiB"),
    "padding lie": (frame(DATA, PADDED | END_STREAM, 1, b"\x09abc"), kvread.Malformed, "more padding"),
    "odd settings": (frame(SETTINGS, 0, 0, b"\x00\x03\x00"), kvread.Malformed, "multiple of 6"),
    "short ping": (frame(PING, 0, 0, b"123"), kvread.Malformed, "PING frame"),
    "goaway": (frame(GOAWAY, 0, 0, b"\x00" * 8), ConnectionError, "GOAWAY"),
    "reset": (frame(RST_STREAM, 0, 1, b"\x00\x00\x00\x02"), ConnectionError, "RST_STREAM"),
    "cut short": (frame(DATA, 0, 1, b"abc")[:-1], ConnectionError, "before its answer was complete"),
    "compressed": (frame(DATA, END_STREAM, 1, grpc(range_response((KEY, VALUE)), flag=1)), kvread.Malformed,
                   "compressed"),
    "length lie": (frame(DATA, END_STREAM, 1, grpc(range_response((KEY, VALUE)))[:-2]), kvread.Malformed,
                   "cut short or followed"),
    "another key": (frame(DATA, END_STREAM, 1, grpc(range_response((b"/other", VALUE)))), kvread.Malformed,
                    "another key"),
    "two values": (frame(DATA, END_STREAM, 1, grpc(range_response((KEY, VALUE), (KEY, b"x")))), kvread.Malformed,
                   "several values"),
    "varint overflow": (frame(DATA, END_STREAM, 1, grpc(b"\x08" + b"\xff" * 11)), kvread.Malformed, "10 bytes"),
    "field past the end": (frame(DATA, END_STREAM, 1, grpc(b"\x12\x7f" + b"x")), kvread.Malformed, "cut short"),
    "group": (frame(DATA, END_STREAM, 1, grpc(b"\x13")), kvread.Malformed, "wire type 3"),
    "kvs not a message": (frame(DATA, END_STREAM, 1, grpc(b"\x10\x01")), kvread.Malformed, "not a message"),
}


@pytest.mark.parametrize("lie", sorted(LIES))
def test_a_lying_answer_is_refused_by_name(lie: str) -> None:
    payload, kind, words = LIES[lie]
    with pytest.raises(kind) as caught:
        serve(payload)
    assert words in str(caught.value)


def test_hpack_lengths_past_the_one_byte_prefix() -> None:
    def decode(prefix: bytes) -> int:  # RFC 7541 5.1: 127, then 7 bits a byte, least significant first
        return 0x7F + sum((x & 0x7F) << (7 * i) for i, x in enumerate(prefix[1:]))

    encoded = kvread._hpack_string("a" * 300)
    assert encoded[0] == 0x7F and decode(encoded[:-300]) == 300 and encoded.endswith(b"a" * 300)
