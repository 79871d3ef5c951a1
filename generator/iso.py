"""ISO: seed files -> the bytes of a NoCloud seed ISO (pycdlib, label "cidata")."""

from __future__ import annotations

import contextlib
import hashlib
import io
import re
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from time import struct_time
from typing import Any, BinaryIO

from .errors import IsoError

VOLUME_LABEL = "cidata"  # the label cloud-init's NoCloud datasource looks for
_ISO_SAFE = re.compile(r"[^A-Z0-9_]")
_clock_lock = threading.Lock()


@dataclass(frozen=True)
class SeedEntry:
    """One file on the seed: its name as the guest sees it, and its bytes."""

    name: str
    data: bytes


class _PinnedClock:
    """Stands in for the `time` module inside pycdlib while an ISO is built.

    pycdlib stamps every volume and directory record with time.time(), in the
    local time zone; pinning both makes the same input give the same bytes.
    """

    def __init__(self, epoch: int) -> None:
        self._epoch = epoch

    def time(self) -> float:
        return float(self._epoch)

    def localtime(self, secs: float | None = None) -> struct_time:
        return time.gmtime(self._epoch if secs is None else secs)

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


@contextlib.contextmanager
def _pinned_clock(epoch: int) -> Iterator[None]:
    import pycdlib.dates
    import pycdlib.headervd
    import pycdlib.pycdlib
    import pycdlib.utils

    modules = (pycdlib.dates, pycdlib.headervd, pycdlib.pycdlib, pycdlib.utils)
    with _clock_lock:
        saved = [m.time for m in modules]
        for module in modules:
            module.time = _PinnedClock(epoch)  # type: ignore[attr-defined]
        try:
            yield
        finally:
            for module, original in zip(modules, saved, strict=True):
                module.time = original  # type: ignore[attr-defined]


def iso9660_name(name: str, taken: set[str]) -> str:
    """A plain ISO9660 name for a file (the guest reads the Rock Ridge/Joliet name)."""
    stem, _, ext = name.upper().rpartition(".") if "." in name else (name.upper(), "", "")
    stem = _ISO_SAFE.sub("_", stem)[:8] or "FILE"
    ext = _ISO_SAFE.sub("_", ext)[:3]
    candidate, n = f"{stem}.{ext}", 0
    while candidate in taken:
        n += 1
        candidate = f"{stem[:8 - len(str(n))]}{n}.{ext}"
    taken.add(candidate)
    return candidate


class _View:
    """A read-only file over bytes that hands out memoryview slices: pycdlib copies the
    bundle into the image without Python copying it first."""

    mode = "rb"  # pycdlib asks for a binary file

    def __init__(self, data: bytes) -> None:
        self._view = memoryview(data)
        self._pos = 0

    def read(self, size: int = -1) -> memoryview:
        end = len(self._view) if size < 0 else min(len(self._view), self._pos + size)
        chunk = self._view[self._pos:end]
        self._pos = end
        return chunk

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: len(self._view)}[whence]
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos


class HashSink:
    """A write-only file that yields the sha256 and size of what is written, without holding the files' data.

    pycdlib writes an image out of order (it seeks back to fill in directory records), so
    small writes are kept sector by sector, and the large blocks of file data, memoryview
    slices of the inputs (see _View), are kept by reference and hashed in place at the end.
    """

    mode = "wb"  # pycdlib asks for a binary file
    _LARGE = 1 << 16
    _SECTOR = 2048

    def __init__(self) -> None:
        self._sectors: dict[int, bytearray] = {}
        self._small_writes: list[tuple[int, int]] = []
        self._large: list[tuple[int, memoryview]] = []
        self._pos = 0
        self.size = 0

    def write(self, data: bytes | memoryview) -> int:
        size, start = len(data), self._pos
        if isinstance(data, memoryview) and size >= self._LARGE:
            self._large.append((start, data))
        elif size:
            self._small_writes.append((start, start + size))
            done = 0
            while done < size:
                index, offset = divmod(start + done, self._SECTOR)
                step = min(size - done, self._SECTOR - offset)
                sector = self._sectors.setdefault(index, bytearray(self._SECTOR))
                sector[offset:offset + step] = data[done:done + step]
                done += step
        self._pos += size
        self.size = max(self.size, self._pos)
        return size

    def seek(self, offset: int, whence: int = 0) -> int:
        self._pos = {0: offset, 1: self._pos + offset, 2: self.size + offset}[whence]
        return self._pos

    def tell(self) -> int:
        return self._pos

    def _small(self, digest: Any, start: int, end: int) -> None:
        """Hash [start, end) from the small writes, zeros where nothing was written."""
        zeros = bytes(self._SECTOR)
        while start < end:
            index, offset = divmod(start, self._SECTOR)
            step = min(end - start, self._SECTOR - offset)
            digest.update(memoryview(self._sectors.get(index, zeros))[offset:offset + step])
            start += step

    def hexdigest(self) -> str:
        digest, pos = hashlib.sha256(), 0
        for offset, data in sorted(self._large, key=lambda item: item[0]):
            end = offset + len(data)
            if offset < pos or any(a < end and offset < b for a, b in self._small_writes):
                raise IsoError("seed ISO: file data overlaps other writes; cannot hash it in place")
            self._small(digest, pos, offset)
            digest.update(data)
            pos = end
        self._small(digest, pos, self.size)
        return digest.hexdigest()


# pycdlib copies file data in blocks of this size: large blocks keep its Python loop short.
_BLOCK = 1 << 20


def write_iso(entries: Sequence[SeedEntry], epoch: int, outfp: BinaryIO | HashSink) -> None:
    """Write a seed ISO holding `entries` at its root to outfp, in order (it is never held in memory).

    The volume is ISO9660 with Rock Ridge and Joliet, labelled "cidata", so that
    Linux and cloud-init read the names exactly (user-data, meta-data, ...).

    Args:
        entries: the files, in the order they are laid out.
        epoch: seconds since 1970 stamped on every date in the image.
        outfp: a binary file, or a HashSink to learn the image's sha256 and size.

    Raises:
        IsoError: pycdlib refused the input.
    """
    import pycdlib  # imported here: a build with nothing new to write never needs it
    from pycdlib.pycdlibexception import PyCdlibException

    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise IsoError(f"seed files have duplicate names: {names}")
    taken: set[str] = set()
    try:
        with _pinned_clock(epoch):
            image = pycdlib.PyCdlib()
            image.new(interchange_level=3, vol_ident=VOLUME_LABEL, sys_ident="LINUX",
                      joliet=3, rock_ridge="1.09")
            for entry in entries:
                image.add_fp(_View(entry.data), len(entry.data),  # type: ignore[arg-type]
                             iso_path=f"/{iso9660_name(entry.name, taken)};1",
                             rr_name=entry.name, joliet_path=f"/{entry.name}", file_mode=0o100444)
            image.write_fp(outfp, blocksize=_BLOCK)  # type: ignore[arg-type]
            image.close()
    except PyCdlibException as exc:
        raise IsoError(f"cannot build the seed ISO: {exc}") from None


def build_iso(entries: list[SeedEntry], epoch: int) -> bytes:
    """The bytes of a seed ISO holding `entries` (see write_iso)."""
    out = io.BytesIO()
    write_iso(entries, epoch, out)
    return out.getvalue()


def iso_digest(entries: Sequence[SeedEntry], epoch: int) -> tuple[str, int]:
    """The sha256 and size of the seed ISO write_iso would write."""
    sink = HashSink()
    write_iso(entries, epoch, sink)
    return sink.hexdigest(), sink.size


def read_iso(iso_bytes: bytes) -> dict[str, bytes]:
    """The files at the root of a seed ISO, by their Rock Ridge names."""
    import pycdlib
    from pycdlib.pycdlibexception import PyCdlibException

    image = pycdlib.PyCdlib()
    try:
        image.open_fp(io.BytesIO(iso_bytes))
        files = {}
        for child in image.list_children(rr_path="/"):
            if child.is_dot() or child.is_dotdot():
                continue
            name = child.rock_ridge.name().decode()
            buf = io.BytesIO()
            image.get_file_from_iso_fp(buf, rr_path=f"/{name}")
            files[name] = buf.getvalue()
        image.close()
    except PyCdlibException as exc:
        raise IsoError(f"not a readable ISO: {exc}") from None
    return files


def volume_label(iso_bytes: bytes) -> str:
    """The ISO9660 volume identifier, as blkid reports it."""
    return iso_bytes[32768 + 40:32768 + 72].decode("ascii").rstrip()
