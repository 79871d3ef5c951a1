"""Fast path: a build or plan with nothing to do answers from a local record, without the heavy imports.

A full build that changed nothing records, in <cluster>/.etcd-seed-cache.json (git-ignored, never
committed), a digest of every input (the spec, the tool's code and templates, the files the spec
names, SOURCE_DATE_EPOCH), the size and mtime of every file in the output tree, the first moment a
certificate comes within pki.renew_before_days of expiry, and what build and plan printed. A later
run whose inputs have the same digest, whose tree holds exactly those files unchanged, and which
runs before that moment prints the same and exits: it imports neither cryptography, Jinja nor
pycdlib. Anything else falls through to the full run. `verify` never takes this path.

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

NAME = ".etcd-seed-cache.json"
FORMAT = 1
_PACKAGE = Path(__file__).resolve().parent
_TEMPLATE_DIRS = (_PACKAGE / "templates", _PACKAGE.parent / "templates")


@dataclass(frozen=True)
class Replay:
    """What the recorded run printed, to print again."""

    out: str
    err: str


def _stat_key(path: Path) -> list[int] | None:
    try:
        return _identity(os.stat(path))
    except OSError:
        return None


def _code_digest() -> str:
    """The tool itself: its version, its Python sources and its templates."""
    from . import __version__

    digest = hashlib.sha256(__version__.encode())
    for directory in (_PACKAGE, *_TEMPLATE_DIRS):
        if not directory.is_dir():
            continue
        for path in sorted(directory.iterdir()):
            if path.is_file() and path.suffix in (".py", ".j2", ""):
                digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def input_digest(command_args: Iterable[str], spec_path: Path, inputs: Mapping[str, list[int] | None]) -> str:
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
    """Every regular file under root (one level of subdirectories), by relative path.

    Each is [size, mtime_ns, ctime_ns, inode, mode]: a file rewritten with its old size and
    mtime put back still has a new ctime, which only the kernel sets.

    None when the tree holds anything else (a link, a deeper directory, a special file).
    """
    files: dict[str, list[int]] = {}
    try:
        top = list(os.scandir(root))
        for entry in top:
            if entry.name == NAME:
                continue
            if entry.is_dir(follow_symlinks=False):
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


def _identity(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_mode & 0o7777]


def _roots(out: Path) -> list[Path]:
    try:
        return [Path(entry.path) for entry in os.scandir(out) if entry.is_dir(follow_symlinks=False)]
    except OSError:
        return []


def lookup(command: str, command_args: Iterable[str], spec_path: Path, out: Path, now: float) -> Replay | None:
    """The recorded output, when a full run now would find nothing to do; None to run in full."""
    spec_key = str(spec_path.resolve())
    args = list(command_args)
    for root in _roots(out):
        try:
            record = json.loads((root / NAME).read_bytes())
        except (OSError, ValueError):
            continue
        if not isinstance(record, dict) or record.get("format") != FORMAT or record.get("spec") != spec_key:
            continue
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
    inputs = {str(p.resolve()): _stat_key(p) for p in input_paths}
    files = tree_files(root)
    if files is None:
        return
    document = {
        "format": FORMAT, "spec": str(spec_path.resolve()),
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
