"""ISO: seed files -> the bytes of a NoCloud seed ISO (pycdlib, label "cidata")."""

from __future__ import annotations

import contextlib
import io
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from time import struct_time
from typing import Any

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


def build_iso(entries: list[SeedEntry], epoch: int) -> bytes:
    """Build a seed ISO holding `entries` at its root.

    The volume is ISO9660 with Rock Ridge and Joliet, labelled "cidata", so that
    Linux and cloud-init read the names exactly (user-data, meta-data, ...).

    Args:
        entries: the files, in the order they are laid out.
        epoch: seconds since 1970 stamped on every date in the image.

    Returns:
        The image's bytes.

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
                image.add_fp(io.BytesIO(entry.data), len(entry.data),
                             iso_path=f"/{iso9660_name(entry.name, taken)};1",
                             rr_name=entry.name, joliet_path=f"/{entry.name}", file_mode=0o100444)
            out = io.BytesIO()
            image.write_fp(out)
            image.close()
    except PyCdlibException as exc:
        raise IsoError(f"cannot build the seed ISO: {exc}") from None
    return out.getvalue()


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
