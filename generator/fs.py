"""Filesystem: the disk edge. Bounded reads of regular files, the output lock, staged atomic writes, modes."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import stat
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .errors import MaterialError, OutputError
from .layout import PUBLIC_DIR_MODE, PUBLIC_MODE, TEMP_PREFIX, pki_path

MiB = 1 << 20
LIMITS = {"spec": MiB, "pem": MiB, "state": 64 * MiB, "bundle": 1024 * MiB, "snapshot": 8 * 1024 * MiB}


def read_regular(path: Path, limit: int, field: str, error: type[MaterialError | OutputError] = MaterialError,
                 missing_ok: bool = False) -> bytes | None:
    """The bytes of a regular file of at most `limit` bytes.

    A FIFO, a device such as /dev/zero, a directory or an oversized file is refused
    before anything is read from it, so no input can hang a run or exhaust its memory.

    Raises:
        `error`: naming `field` and the path.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        if missing_ok:
            return None
        raise error(f"{field}: {path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise error(f"{field}: cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise error(f"{field}: {path} is not a regular file")
        if info.st_size > limit:
            raise error(f"{field}: {path} is {info.st_size} bytes, more than the {limit} allowed")
        chunks, size = [], 0
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise error(f"{field}: {path} grew past the {limit} bytes allowed while being read")
        return b"".join(chunks)
    except OSError as exc:
        raise error(f"{field}: cannot read {path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def read_spec_text(path: Path) -> str:
    """The text of cluster.yaml."""
    data = read_regular(path, LIMITS["spec"], "spec", missing_ok=True)
    if data is None:
        raise MaterialError(f"{path}: no such spec file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MaterialError(f"{path}: cannot read the spec: {exc}") from None


def read_optional(path: Path, field: str | None = None, limit: int = LIMITS["state"]) -> bytes | None:
    """A state file's bytes (manifest, sealed index), or None when it does not exist."""
    return read_regular(path, limit, field or str(path), error=OutputError, missing_ok=True)


def load_pki_dir(pki_dir: Path) -> dict[str, bytes]:
    """Every .crt, .key and .der (the CRL) already in a cluster's keys directory, by file name."""
    if not pki_dir.is_dir():
        return {}
    try:
        names = sorted(p.name for p in pki_dir.iterdir() if p.suffix in (".crt", ".key", ".der"))
    except OSError as exc:
        raise OutputError(f"{pki_dir}: cannot read existing PKI: {exc.strerror or exc}") from None
    found = {}
    for name in names:
        data = read_regular(pki_dir / name, LIMITS["pem"], pki_path(name), error=OutputError, missing_ok=True)
        if data is not None:
            found[name] = data
    return found


@dataclass(frozen=True)
class OnDisk:
    """What is at one path of the output tree now."""

    sha256: str
    size: int
    mode: int


def scan(root: Path) -> tuple[dict[str, OnDisk], dict[str, int], list[str]]:
    """Every regular file under root (sha256, size, mode), every directory's mode, and other entries.

    The third list names what is neither a regular file nor a directory (links, FIFOs).
    Files are hashed in chunks: an ISO is never held in memory.
    """
    files: dict[str, OnDisk] = {}
    dirs: dict[str, int] = {}
    odd: list[str] = []
    if not root.is_dir():
        return files, dirs, odd
    try:
        dirs["."] = root.stat().st_mode & 0o777
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root).as_posix()
            if ".git" in path.relative_to(root).parts:
                continue
            info = path.lstat()
            if stat.S_ISDIR(info.st_mode):
                dirs[rel] = info.st_mode & 0o777
            elif stat.S_ISREG(info.st_mode):
                files[rel] = OnDisk(sha256_file(path), info.st_size, info.st_mode & 0o777)
            else:
                odd.append(rel)
    except OSError as exc:
        raise OutputError(f"{root}: cannot read: {exc.strerror or exc}") from None
    return files, dirs, odd


def sha256_file(path: Path) -> str:
    """The sha256 of a regular file, read in chunks (an ISO is never held in memory)."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def read_files(root: Path, paths: Sequence[str]) -> dict[str, bytes]:
    """The bytes of the small files among `paths` (everything but ISOs), bounded."""
    out = {}
    for rel in paths:
        data = read_regular(root / rel, LIMITS["state"], rel, error=OutputError, missing_ok=True)
        if data is not None:
            out[rel] = data
    return out


@contextlib.contextmanager
def locked(root: Path, exclusive: bool) -> Iterator[None]:
    """Hold a lock on the cluster's output directory: one writer, or any number of readers.

    A second writer does not wait: it stops with an error, so that two builds can never
    interleave their files (leaves from one CA beside another CA's certificate).
    """
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise OutputError(f"{root}: cannot open: {exc.strerror or exc}") from None
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise OutputError(f"{root}: another etcd-seed run is using this directory; "
                                  "wait for it to finish and run again") from None
            raise OutputError(f"{root}: cannot lock: {exc.strerror or exc}") from None
        yield
    finally:
        os.close(fd)


def make_dirs(root: Path, dirs: dict[str, int]) -> list[Path]:
    """Create root and the given subdirectories with exactly their modes (umask does not apply).

    Returns:
        The directories this call created, deepest first, so a failed run can remove them.
    """
    created: list[Path] = []
    enforced = {root / rel: mode for rel, mode in dirs.items()}
    wanted = {**{path: PUBLIC_DIR_MODE for path in [*reversed(root.parents), root]}, **enforced}
    try:
        for path, mode in wanted.items():
            try:
                path.mkdir(mode=0o700)  # opened up below: never more open than meant, even for a moment
            except FileExistsError:  # there already, or another run made it just now
                if path in enforced and path.stat().st_mode & 0o777 != mode:
                    path.chmod(mode)
                continue
            created.insert(0, path)
            path.chmod(mode)
    except OSError as exc:
        raise OutputError(f"{exc.filename or root}: cannot create: {exc.strerror or exc}") from None
    return created


def remove_empty(paths: Sequence[Path]) -> None:
    """Remove directories a failed run created, if they are still empty."""
    for path in paths:
        with contextlib.suppress(OSError):
            path.rmdir()


def remove_stale_temps(root: Path) -> list[str]:
    """Delete temporary files that a killed run left behind (they may hold keys)."""
    removed = []
    for path in sorted(root.rglob(f"{TEMP_PREFIX}*")):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path.relative_to(root).as_posix())
    return removed


def const(data: bytes) -> Callable[[], bytes]:
    """A Write's `make` for bytes already in memory."""
    return lambda: data


@dataclass(frozen=True)
class Write:
    """One file to put in place: its path under root, mode, and how to make its bytes.

    `make` returns the bytes; a large file (a seed ISO) is instead written straight into
    its temporary file by `make` called with that file.
    """

    path: str
    mode: int
    make: Callable[[], bytes] | Callable[[BinaryIO], None]
    streamed: bool = False


def stage_and_commit(root: Path, writes: Sequence[Write], journal: str | None = None,
                     record: Mapping[str, object] | None = None) -> None:
    """Write every file to a temporary name first, then rename them into place in order.

    Nothing is renamed until every file has been made and written, so a failure while
    making one (an ISO, a full disk) leaves the tree as it was. Before the first rename,
    the journal (at `journal` under root) lists every rename with `record`'s entries: a run
    killed among the renames is completed by the next one (see finish_renames), so the
    tree never stays half old, half new. The caller removes the journal when its run is done.

    Raises:
        OutputError: naming the file that could not be written.
    """
    staged: list[tuple[Path, Path]] = []
    committing = False
    try:
        for write in writes:
            staged.append((_stage(root / write.path, write, write.mode), root / write.path))
        # Every file reaches the disk before any rename; the fsyncs run side by side, so
        # that the file system can commit them together.
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(_fsync, [tmp for tmp, _ in staged]))
        if journal is not None:  # one file alone is put in place by one rename: it needs none
            renames = [[tmp.relative_to(root).as_posix(), final.relative_to(root).as_posix()] for tmp, final in staged]
            data = (json.dumps({**(record or {}), "renames": renames}, indent=2, sort_keys=True) + "\n").encode()
            written = _stage(root / journal, Write(journal, PUBLIC_MODE, lambda: data), PUBLIC_MODE)
            _fsync(written)
            os.replace(written, root / journal)
            _fsync((root / journal).parent)
            committing = True
        for tmp, final in staged:
            os.replace(tmp, final)
        for directory in sorted({final.parent for _, final in staged}):
            _fsync(directory)
    except OSError as exc:
        raise OutputError(f"{exc.filename or root}: cannot write: {exc.strerror or exc}") from None
    finally:
        if not committing:  # once the journal lists them, a failed rename is finished by the next run
            for tmp, _ in staged:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()


def finish_renames(root: Path, renames: Sequence[tuple[str, str]]) -> None:
    """Complete the renames a killed run's journal lists: each temporary file still there takes its place.

    The pairs come from a file in the output tree: each must be a temporary name of this tool beside its
    target, under root, and a regular file (never a link).

    Raises:
        OutputError: a pair that is not of that shape, or a rename that fails.
    """
    for tmp, final in renames:
        head, _, name = final.rpartition("/")
        if not _SAFE_REL.fullmatch(final) or not _TEMP_OF.fullmatch(tmp.rpartition("/")[2]) \
                or tmp.rpartition("/")[0] != head or not tmp.rpartition("/")[2].startswith(f"{TEMP_PREFIX}{name}."):
            raise OutputError(f"{tmp} -> {final}: not a rename this tool journals; refusing to act on it")
        source = root / tmp
        try:
            info = source.lstat()
        except FileNotFoundError:
            continue  # renamed before the run was killed
        if not stat.S_ISREG(info.st_mode):
            raise OutputError(f"{tmp}: not a regular file; refusing to put it in place")
        try:
            os.replace(source, root / final)
        except OSError as exc:
            raise OutputError(f"{final}: cannot complete an interrupted run: {exc.strerror or exc}") from None


# A path under the output tree as the build names them: up to three parts, none of them "." or "..".
_SAFE_REL = re.compile(r"(?!\.\.?(/|$))[A-Za-z0-9._-]{1,128}(/(?!\.\.?(/|$))[A-Za-z0-9._-]{1,128}){0,2}")
_TEMP_OF = re.compile(re.escape(TEMP_PREFIX) + r"[A-Za-z0-9._-]{1,128}\.[0-9a-f]{12}")


def _stage(path: Path, write: Write, mode: int) -> Path:
    # Create the temporary file with its final mode: a key is never readable by others.
    tmp = path.parent / f"{TEMP_PREFIX}{path.name}.{os.urandom(6).hex()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            if write.streamed:
                write.make(handle)  # type: ignore[call-arg]
            else:
                handle.write(write.make())  # type: ignore[call-arg,arg-type]
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _fsync(path: Path) -> None:
    """Flush a file's bytes, or a directory's entries (so that the renames into it survive a power cut)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def chmod(path: Path, mode: int) -> None:
    """Set a file's mode, as an OutputError on failure."""
    try:
        path.chmod(mode)
    except OSError as exc:
        raise OutputError(f"{path}: cannot chmod: {exc.strerror or exc}") from None


def remove(path: Path) -> None:
    """Delete a file if it is there."""
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        raise OutputError(f"{path}: cannot remove: {exc.strerror or exc}") from None


def write_file(path: Path, data: bytes, mode: int) -> bool:
    """Write one file atomically with `mode`, unless it already holds `data` with that mode.

    Returns:
        True when the file was created or changed (content or mode).
    """
    current = read_regular(path, LIMITS["state"], str(path), error=OutputError, missing_ok=True)
    if current == data:
        if path.stat().st_mode & 0o777 == mode:
            return False
        chmod(path, mode)
        return True
    stage_and_commit(path.parent, [Write(path.name, mode, lambda: data)])
    return True
