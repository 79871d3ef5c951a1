"""Keygen: RSA keys made ahead in forked children while a build reads its inputs.

An RSA key takes tens of milliseconds of one core, and cryptography holds the GIL while it
makes one, so threads do not help; a child per core makes its share of the keys and writes
each down a pipe as soon as it has it, then exits. The children start before the parent has
imported cryptography (they import it themselves). pki.generate_key takes their keys as it
needs them; keys left over are thrown away. A child never waits for its parent: when the
build dies, each child finishes its few keys and exits, holding nothing open. Only the
standard library is imported here.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field

_TAKE_TIMEOUT_S = 30  # a child that has not delivered by then is killed; the key is made in-process


@dataclass
class _Child:
    pid: int
    fd: int
    buffer: bytearray = field(default_factory=bytearray)
    left: int = 0


@dataclass
class _Ahead:
    key_type: str
    children: list[_Child]
    turn: int = 0


_ahead: _Ahead | None = None


def _make_keys(key_type: str, count: int, fd: int) -> None:
    """In the child: make `count` keys, writing each as a length-prefixed PKCS#8 PEM."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    for _ in range(count):
        key = rsa.generate_private_key(public_exponent=65537, key_size=int(key_type[3:]))
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        os.write(fd, len(pem).to_bytes(4, "big") + pem)


def _fork(key_type: str, count: int) -> _Child:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 0
        try:
            os.close(read_end)
            signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # the parent is gone: stop at once
            _make_keys(key_type, count, write_end)
        except BaseException:
            code = 1
        os._exit(code)
    os.close(write_end)
    return _Child(pid, read_end, left=count)


@contextlib.contextmanager
def keys_made_ahead(key_type: str, count: int) -> Iterator[None]:
    """Start making `count` keys of `key_type` in child processes for the duration of the block."""
    global _ahead
    workers = min(count, os.cpu_count() or 1)
    if count < 2 or workers < 2 or _ahead is not None or not key_type.startswith("rsa"):
        yield  # an ECDSA key takes well under a millisecond
        return
    shares = [count // workers + (i < count % workers) for i in range(workers)]
    _ahead = _Ahead(key_type, [_fork(key_type, share) for share in shares])
    try:
        yield
    finally:
        for child in _ahead.children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGKILL)
            os.close(child.fd)
            os.waitpid(child.pid, 0)
        _ahead = None


def _read_key(child: _Child) -> bytes | None:
    while True:
        if len(child.buffer) >= 4:
            size = int.from_bytes(child.buffer[:4], "big")
            if len(child.buffer) >= 4 + size:
                pem = bytes(child.buffer[4:4 + size])
                del child.buffer[:4 + size]
                child.left -= 1
                return pem
        ready, _, _ = select.select([child.fd], [], [], _TAKE_TIMEOUT_S)
        chunk = os.read(child.fd, 65536) if ready else b""
        if not chunk:  # the child failed, or hung and is given up on
            child.left = 0
            return None
        child.buffer += chunk


def take(key_type: str) -> bytes | None:
    """A key made ahead, as PEM, or None when there is none of this type left."""
    if _ahead is None or _ahead.key_type != key_type:
        return None
    for _ in range(len(_ahead.children)):
        child = _ahead.children[_ahead.turn % len(_ahead.children)]
        _ahead.turn += 1
        if child.left > 0:
            pem = _read_key(child)
            if pem is not None:
                return pem
    return None
