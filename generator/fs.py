"""Filesystem: read inputs and existing state, write output/ atomically with the right modes."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from .errors import MaterialError, OutputError
from .spec import Spec

SECRET_MODE = 0o600
PUBLIC_MODE = 0o644
SECRET_DIR_MODE = 0o700


@dataclass(frozen=True)
class Artifact:
    """One output file: where it goes under output/<cluster>/, its mode, and how to make it.

    `inputs` is a digest of everything `make` depends on, for files that are
    costly to make (ISOs): when it matches the previous manifest and the file
    on disk still has the recorded sha256, the file is not made again.
    """

    path: str
    mode: int
    make: Callable[[], bytes]
    inputs: str | None = None


@dataclass(frozen=True)
class FileState:
    """What a build did, or would do, to one file."""

    path: str
    mode: int
    status: str  # "create", "update", "mode" (permissions only) or "unchanged"
    sha256: str | None  # None when a plan did not make the file
    size: int | None
    inputs: str | None = None


@dataclass(frozen=True)
class Bundle:
    """The etcd release tarball to carry on each seed (data is None in url mode)."""

    name: str
    sha256: str
    data: bytes | None


def read_spec_text(path: Path) -> str:
    """The text of cluster.yaml."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MaterialError(f"{path}: no such spec file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise MaterialError(f"{path}: cannot read the spec: {exc}") from None


def load_bundle(spec: Spec, checked: frozenset[str] = frozenset()) -> Bundle:
    """Read and check the etcd tarball: it exists, matches etcd.sha256, holds etcd and etcdctl.

    `checked` holds sha256s of tarballs whose contents an earlier build already
    checked (from its manifest); listing a tarball means decompressing all of it.

    Raises:
        MaterialError: naming etcd.bundle and the problem.
    """
    etcd = spec.etcd
    if etcd.bundle is None:
        assert etcd.sha256 is not None  # noqa: S101 - the spec requires it with url
        return Bundle(name=etcd.tarball_name, sha256=etcd.sha256, data=None)
    try:
        data = etcd.bundle.read_bytes()
    except FileNotFoundError:
        raise MaterialError(f"etcd.bundle: {etcd.bundle} does not exist",
                            hint="'make bundle' builds the example's tarball") from None
    except OSError as exc:
        raise MaterialError(f"etcd.bundle: cannot read {etcd.bundle}: {exc}") from None
    digest = hashlib.sha256(data).hexdigest()
    if etcd.sha256 is not None and digest != etcd.sha256:
        raise MaterialError(f"etcd.bundle: {etcd.bundle} has sha256 {digest}, but etcd.sha256 "
                            f"is {etcd.sha256}")
    problem = None if digest in checked else _check_release_tarball(data, etcd.version)
    if problem:
        raise MaterialError(f"etcd.bundle: {etcd.bundle} {problem}")
    return Bundle(name=etcd.tarball_name, sha256=digest, data=data)


def _check_release_tarball(data: bytes, version: str) -> str | None:
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            names = {PurePosixPath(m.name) for m in tar.getmembers() if m.isfile()}
    except (tarfile.TarError, OSError, EOFError):
        return "is not a .tar.gz archive"
    tops = {n.parts[0] for n in names if len(n.parts) == 2 and n.name in ("etcd", "etcdctl")}
    if not tops:
        return "holds no <dir>/etcd and <dir>/etcdctl; is it an etcd release tarball?"
    want = f"etcd-v{version}-linux-amd64"
    if want not in tops:
        return f"holds {', '.join(sorted(tops))}/, but etcd.version {version} needs {want}/"
    missing = [b for b in ("etcd", "etcdctl") if PurePosixPath(want, b) not in names]
    if missing:
        return f"lacks {want}/{missing[0]}"
    return None


def load_imported_ca(spec: Spec) -> tuple[bytes, bytes] | None:
    """The PEM bytes of the CA that pki.ca names, if any."""
    if spec.pki.ca is None:
        return None
    out = []
    for field, path in (("cert", spec.pki.ca.cert), ("key", spec.pki.ca.key)):
        try:
            out.append(path.read_bytes())
        except OSError as exc:
            raise MaterialError(f"pki.ca.{field}: cannot read {path}: "
                                f"{exc.strerror or exc}") from None
    return out[0], out[1]


def read_optional(path: Path) -> bytes | None:
    """A file's bytes, or None when it does not exist."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise OutputError(f"{path}: cannot read: {exc.strerror or exc}") from None


def load_pki_dir(pki_dir: Path) -> dict[str, bytes]:
    """Every .crt and .key already in a cluster's pki/ directory, by file name."""
    if not pki_dir.is_dir():
        return {}
    try:
        return {p.name: p.read_bytes() for p in sorted(pki_dir.iterdir())
                if p.suffix in (".crt", ".key") and p.is_file()}
    except OSError as exc:
        raise OutputError(f"{pki_dir}: cannot read existing PKI: {exc}") from None


def write_file(path: Path, data: bytes, mode: int) -> bool:
    """Write `data` to `path` atomically with `mode`, unless it is already there.

    Returns:
        True when the file was created or changed (content or mode).
    """
    try:
        if path.is_file() and path.read_bytes() == data:
            if path.stat().st_mode & 0o777 == mode:
                return False
            path.chmod(mode)
            return True
        path.parent.mkdir(parents=True, exist_ok=True)
        # Create the temporary file with its final mode: a key is never readable by others.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            os.fchmod(fd, mode)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise OutputError(f"{path}: cannot write: {exc.strerror or exc}") from None
    return True


def sha256_file(path: Path) -> str:
    """The sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sync(root: Path, artifacts: list[Artifact], previous: Mapping[str, Mapping[str, Any]],
         write: bool) -> list[FileState]:
    """Bring root/ in line with `artifacts`, or, with write=False, only say what that would change.

    Args:
        root: output/<cluster>.
        artifacts: every file, in order.
        previous: the "files" table of the manifest already on disk, if any.
        write: False for a plan.

    Returns:
        One FileState per artifact.
    """
    states = []
    for artifact in artifacts:
        path = root / artifact.path
        try:
            states.append(_sync_one(path, artifact, previous.get(artifact.path, {}), write))
        except OSError as exc:
            raise OutputError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return states


def _sync_one(path: Path, artifact: Artifact, before: Mapping[str, Any], write: bool) -> FileState:
    exists = path.is_file()
    mode_ok = exists and path.stat().st_mode & 0o777 == artifact.mode
    if artifact.inputs is not None and exists and before.get("inputs") == artifact.inputs \
            and sha256_file(path) == before.get("sha256"):
        status = "unchanged" if mode_ok else "mode"
        if write and not mode_ok:
            path.chmod(artifact.mode)
        return FileState(artifact.path, artifact.mode, status, str(before["sha256"]),
                         path.stat().st_size, artifact.inputs)
    if artifact.inputs is not None and not write:
        return FileState(artifact.path, artifact.mode, "update" if exists else "create", None, None,
                         artifact.inputs)
    data = artifact.make()
    same = exists and path.read_bytes() == data
    status = "create" if not exists else "unchanged" if same and mode_ok else "mode" if same else "update"
    if write and status != "unchanged":
        write_file(path, data, artifact.mode)
    return FileState(artifact.path, artifact.mode, status, hashlib.sha256(data).hexdigest(), len(data),
                     artifact.inputs)


def read_tree(root: Path) -> tuple[dict[str, bytes], dict[str, int]]:
    """Every file under root by relative path, and each one's permission bits."""
    files, modes = {}, {}
    try:
        for path in sorted(root.rglob("*")):
            if path.is_file() and ".git" not in path.relative_to(root).parts:
                rel = path.relative_to(root).as_posix()
                files[rel], modes[rel] = path.read_bytes(), path.stat().st_mode & 0o777
    except OSError as exc:
        raise OutputError(f"{root}: cannot read: {exc.strerror or exc}") from None
    return files, modes


def cloud_init_schema(path: Path) -> str | None:
    """What Debian's `cloud-init schema` says is wrong with a user-data file, or None.

    Returns None too when cloud-init is not installed: the check is then skipped.
    """
    tool = shutil.which("cloud-init")
    if tool is None:
        return None
    result = subprocess.run([tool, "schema", "-c", str(path)], capture_output=True, text=True,
                            check=False)
    if result.returncode == 0:
        return None
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    return "cloud-init schema: " + ("; ".join(lines[-3:]) or f"exit {result.returncode}")


def ensure_dir(path: Path, mode: int) -> None:
    """Create a directory (and parents) and set its mode."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        if path.stat().st_mode & 0o777 != mode:
            path.chmod(mode)
    except OSError as exc:
        raise OutputError(f"{path}: cannot create: {exc.strerror or exc}") from None
