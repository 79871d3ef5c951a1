"""One etcd key, read over gRPC with the standard library: the record of the seed a node runs.

etcd 3.5's JSON gateway ignores the CN of a client certificate, and every certificate this tool issues has
one, so `status` asks etcd's gRPC service itself: one `KV/Range` call on a TLS connection that chose HTTP/2
(ALPN h2). The request's headers are HPACK literals, and the answer's headers are never decoded: the value
is in the DATA frames, and a gRPC error has none. Every length in the answer is bounded and checked before
it is used: a member is not trusted to frame its answer honestly.
https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-HTTP2.md, RFC 9113 (HTTP/2), RFC 7541 (HPACK),
https://etcd.io/docs/v3.5/dev-guide/api_reference_v3/ (RangeRequest, RangeResponse, KeyValue)
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, CONTINUATION = 0x0, 0x1, 0x3, 0x4, 0x6, 0x7, 0x9
END_STREAM, ACK, END_HEADERS, PADDED = 0x1, 0x1, 0x4, 0x8
STREAM = 1  # the one request of the connection
MAX_FRAME = 16384  # SETTINGS_MAX_FRAME_SIZE's initial value, which this client never raises
# A record is under 100 bytes. Well under the stream's initial flow-control window (65535), which this client
# never widens: a larger message would stall at the window until the deadline, instead of being refused.
MAX_MESSAGE = 4 << 10
MAX_FRAMES = 64  # an honest answer takes fewer than ten


class Malformed(ValueError):
    """An answer that is not of the shape etcd gives."""


class NoValue(Exception):
    """etcd ended the call without a message: a gRPC error (no quorum, no permission, a learner)."""


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _hpack_string(text: str) -> bytes:
    """A string literal without Huffman coding: its length as a 7-bit-prefix integer, then its bytes."""
    raw = text.encode("ascii")
    if len(raw) < 0x7F:
        return bytes([len(raw)]) + raw
    rest, out = len(raw) - 0x7F, bytearray([0x7F])
    while rest >= 0x80:
        out.append((rest & 0x7F) | 0x80)
        rest >>= 7
    return bytes(out) + bytes([rest]) + raw


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


def request(authority: str, key: bytes) -> bytes:
    """What the client sends: the preface, empty SETTINGS, the call's headers (each a literal not indexed) and
    one DATA frame holding the gRPC message RangeRequest{key}."""
    headers = ((":method", "POST"), (":scheme", "https"), (":path", "/etcdserverpb.KV/Range"),
               (":authority", authority), ("content-type", "application/grpc"), ("te", "trailers"))
    block = b"".join(b"\x00" + _hpack_string(name) + _hpack_string(value) for name, value in headers)
    message = b"\x0a" + _varint(len(key)) + key  # field 1 (key), length-delimited
    return (PREFACE + _frame(SETTINGS, 0, 0, b"") + _frame(HEADERS, END_HEADERS, STREAM, block)
            + _frame(DATA, END_STREAM, STREAM, b"\x00" + len(message).to_bytes(4, "big") + message))


def _exactly(sock: socket.socket, size: int) -> bytes:
    buffer = bytearray(size)
    view, got = memoryview(buffer), 0
    while got < size:
        n = sock.recv_into(view[got:], size - got)
        if not n:
            raise ConnectionError("closed the connection before its answer was complete")
        got += n
    return bytes(buffer)


def answer_body(sock: socket.socket) -> bytes:
    """The DATA of the call's stream, up to its END_STREAM; SETTINGS and PING are acknowledged on the way."""
    body = b""
    for _ in range(MAX_FRAMES):
        head = _exactly(sock, 9)
        length, kind, flags = int.from_bytes(head[:3], "big"), head[3], head[4]
        stream = int.from_bytes(head[5:], "big") & 0x7FFFFFFF
        if length > MAX_FRAME:
            raise Malformed(f"sent an HTTP/2 frame of {length} bytes, over the {MAX_FRAME} allowed")
        payload = _exactly(sock, length)
        if kind == SETTINGS and stream == 0 and not flags & ACK:
            if length % 6:
                raise Malformed("sent an HTTP/2 SETTINGS frame of a length that is not a multiple of 6")
            sock.sendall(_frame(SETTINGS, ACK, 0, b""))
        elif kind == PING and stream == 0 and not flags & ACK:
            if length != 8:
                raise Malformed("sent an HTTP/2 PING frame that is not 8 bytes")
            sock.sendall(_frame(PING, ACK, 0, payload))
        elif kind == GOAWAY:
            raise ConnectionError("closed the HTTP/2 connection (GOAWAY) before answering")
        elif stream != STREAM:
            continue  # WINDOW_UPDATE, PRIORITY and frames of no stream of ours
        elif kind == RST_STREAM:
            raise ConnectionError("reset the call (RST_STREAM)")
        elif kind == DATA:
            if flags & PADDED:
                if not payload or payload[0] >= length:
                    raise Malformed("sent an HTTP/2 DATA frame with more padding than bytes")
                payload = payload[1:length - payload[0]]
            body += payload
            if len(body) > 5 + MAX_MESSAGE or (len(body) >= 5 and int.from_bytes(body[1:5], "big") > MAX_MESSAGE):
                raise Malformed(f"answered a read of one key with more than {MAX_MESSAGE >> 10} KiB")
        if stream == STREAM and kind in (DATA, HEADERS) and flags & END_STREAM:
            return body
    raise Malformed(f"sent more than {MAX_FRAMES} HTTP/2 frames for one read")


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = 0
    for shift in range(0, 70, 7):
        if pos >= len(buf):
            raise Malformed("answered with a protobuf message cut short")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
    raise Malformed("answered with a protobuf varint of more than 10 bytes")


def fields(buf: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """The (number, wire type, value) of each field of a protobuf message; groups are not etcd's."""
    pos = 0
    while pos < len(buf):
        tag, pos = _read_varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        value: int | bytes
        if wire == 0:
            value, pos = _read_varint(buf, pos)
        elif wire in (1, 2, 5):
            if wire == 2:
                size, pos = _read_varint(buf, pos)
            else:
                size = 8 if wire == 1 else 4
            if number == 0 or pos + size > len(buf):
                raise Malformed("answered with a protobuf field cut short")
            value, pos = buf[pos:pos + size], pos + size
        else:
            raise Malformed(f"answered with a protobuf field of wire type {wire}")
        yield number, wire, value


def range_value(body: bytes, key: bytes) -> bytes | None:
    """The value of `key` in a RangeResponse (kvs is field 2; a KeyValue's key is 1, its value 5), or None."""
    if not body:
        raise NoValue("ended the read with a gRPC error and no answer")
    if len(body) < 5 or body[0] != 0 or int.from_bytes(body[1:5], "big") != len(body) - 5:
        raise Malformed("answered with a gRPC message that is compressed, cut short or followed by more")
    found = []
    for number, wire, value in fields(body[5:]):
        if number != 2:
            continue
        if wire != 2 or not isinstance(value, bytes):
            raise Malformed("answered a RangeResponse whose kvs is not a message")
        pair = {n: v for n, w, v in fields(value) if n in (1, 5) and w == 2}
        if pair.get(1) != key:
            raise Malformed("answered a read of one key with another key")
        found.append(pair.get(5, b""))
    if len(found) > 1:
        raise Malformed("answered a read of one key with several values")
    return bytes(found[0]) if found else None


def get(sock: socket.socket, authority: str, key: bytes) -> bytes | None:
    """Read one key on a connection that speaks HTTP/2 (TLS with ALPN h2): its value, or None when etcd holds
    no such key.

    Raises:
        Malformed: the answer is not etcd's.
        NoValue: etcd answered with a gRPC error.
        OSError: the connection failed, or ended early.
    """
    sock.sendall(request(authority, key))
    return range_value(answer_body(sock), key)
