"""Fast path: a build or plan with nothing to do answers from a local record, without the heavy imports.

A full build that changed nothing records, in <cluster>/.etcd-seed-cache.json (git-ignored, never
committed), a digest of every input (the spec, the tool's code and templates, the versions of the
libraries that shape the output, the files the spec names and where their links lead,
SOURCE_DATE_EPOCH), where the tree is, the size, mtime and mode of every file and the mode of every
directory in it, the first moment a certificate comes within pki.renew_before_days of expiry, and
what build and plan printed. A later run whose inputs have the same digest, whose tree is the same
directory holding exactly those files unchanged, and which runs before that moment prints the same
and exits: it imports neither cryptography, Jinja nor pycdlib. Anything else, a damaged record
included, falls through to the full run. Only a full build (or `verify`) looks inside the files:
a seed edited by hand with its size, times and mode put back is repaired by a full build only.

Only the standard library is imported here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from . import provenance
from .layout import CACHE

NAME = CACHE
FORMAT = 2
MAX_RECORD = 16 << 20  # a record is a few KiB a node; anything larger is not one this tool wrote
_PACKAGE = Path(__file__).resolve().parent
_TEMPLATE_DIRS = (_PACKAGE / "templates", _PACKAGE.parent / "templates")


@dataclass(frozen=True)
class Replay:
    """What the recorded run printed, to print again."""

    out: str
    err: str


def _stat_key(path: Path) -> list[object] | None:
    """Where a named input leads (a link, or a directory on its path, may be re-pointed) and its file's identity."""
    try:
        return [str(path.resolve(strict=True)), *_identity(os.stat(path))]
    except (OSError, RuntimeError):
        return None


def _library_versions() -> str:
    return ";".join(f"{name}=={version}" for name, version in sorted(provenance.installed().items()))


def _code_digest() -> str:
    """The tool itself: its version, its Python sources and its templates."""
    from . import __version__

    digest = hashlib.sha256(__version__.encode() + b"\0" + _library_versions().encode())
    for directory in (_PACKAGE, *_TEMPLATE_DIRS):
        if not directory.is_dir():
            continue
        for path in sorted(directory.iterdir()):
            if path.is_file() and path.suffix in (".py", ".j2", ""):
                digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def input_digest(command_args: Iterable[str], spec_path: Path, inputs: Mapping[str, list[object] | None]) -> str:
    """A digest of everything a build reads besides the output tree."""
    digest = hashlib.sha256(_code_digest().encode())
    digest.update("\0".join(command_args).encode())
    digest.update(os.environ.get("SOURCE_DATE_EPOCH", "-").encode())
    try:
        digest.update(spec_path.read_bytes())
    except OSError:
        digest.update(b"\0missing spec")
    digest.update(json.dumps(dict(inputs), sort_keys=True).encode())
    return digest.hexdigest()


def tree_files(root: Path) -> dict[str, list[int]] | None:
    """Every regular file under root (one level of subdirectories), by relative path, and every directory.

    Each file is [size, mtime_ns, ctime_ns, inode, mode]: a file rewritten with its old size and
    mtime put back still has a new ctime, which only the kernel sets. Each directory, as "<name>/"
    ("./" for root), is [mode].

    None when the tree holds anything else (a link, a deeper directory, a special file).
    """
    files: dict[str, list[int]] = {}
    try:
        files["./"] = [os.stat(root).st_mode & 0o7777]
        top = list(os.scandir(root))
        for entry in top:
            if entry.name == NAME:
                continue
            if entry.is_dir(follow_symlinks=False):
                files[f"{entry.name}/"] = [entry.stat(follow_symlinks=False).st_mode & 0o7777]
                for child in os.scandir(entry.path):
                    st = child.stat(follow_symlinks=False)
                    if not stat.S_ISREG(st.st_mode):
                        return None
                    files[f"{entry.name}/{child.name}"] = _identity(st)
            else:
                st = entry.stat(follow_symlinks=False)
                if not stat.S_ISREG(st.st_mode):
                    return None
                files[entry.name] = _identity(st)
    except OSError:
        return None
    return files


def _read_record(path: Path) -> object:
    """The record, or None: it is a file in the output tree, so anything but a small regular file of JSON
    (a link, a FIFO, a device, deep nesting) is not read as one."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_RECORD:
            return None
        with os.fdopen(fd, "rb", closefd=False) as handle:
            data = handle.read(MAX_RECORD + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


def _identity(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_mode & 0o7777]


def _roots(out: Path) -> list[Path]:
    try:
        return [Path(entry.path) for entry in os.scandir(out) if entry.is_dir(follow_symlinks=False)]
    except OSError:
        return []


def command_args(out: Path) -> list[str]:
    """What of a build's or plan's arguments changes its result: where the tree is."""
    return [str(out.resolve())]


def lookup(command: str, command_args: Iterable[str], spec_path: Path, out: Path, now: float) -> Replay | None:
    """The recorded output, when a full run now would find nothing to do; None to run in full."""
    spec_key = str(spec_path.resolve())
    args = list(command_args)
    for root in _roots(out):
        record = _read_record(root / NAME)
        if not isinstance(record, dict) or record.get("format") != FORMAT or record.get("spec") != spec_key:
            continue
        if record.get("root") != str(root.absolute()):
            continue  # a record that came with a tree moved or copied here: not this tree's
        inputs = record.get("inputs")
        files = record.get("files")
        output = record.get("output", {}).get(command) if isinstance(record.get("output"), dict) else None
        renew_at = record.get("renew_at")
        if not (isinstance(inputs, dict) and isinstance(files, dict) and isinstance(output, dict)
                and isinstance(renew_at, int | float) and now < renew_at):
            return None
        current = {path: _stat_key(Path(path)) for path in inputs}
        if current != inputs or record.get("digest") != input_digest(args, spec_path, current):
            return None
        if tree_files(root) != files:
            return None
        text_out, text_err = output.get("out"), output.get("err")
        if not isinstance(text_out, str) or not isinstance(text_err, str):
            return None
        return Replay(text_out, text_err)
    return None


def record(root: Path, command_args: Iterable[str], spec_path: Path, input_paths: Iterable[Path], renew_at: float,
           outputs: Mapping[str, Replay]) -> None:
    """Record a full run that changed nothing, for the next one (written last, under the caller's lock)."""
    inputs = {str(p.absolute()): _stat_key(p) for p in input_paths}
    files = tree_files(root)
    if files is None:
        return
    document = {
        "format": FORMAT, "spec": str(spec_path.resolve()), "root": str(root.absolute()),
        "digest": input_digest(list(command_args), spec_path, inputs),
        "inputs": inputs, "files": files, "renew_at": renew_at,
        "output": {name: {"out": r.out, "err": r.err} for name, r in outputs.items()},
    }
    temp = root / f".etcd-seed-tmp.{NAME}"
    temp.write_text(json.dumps(document, sort_keys=True))
    os.replace(temp, root / NAME)


def forget(root: Path) -> None:
    """Drop the record: the tree or its inputs changed."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(root / NAME)
