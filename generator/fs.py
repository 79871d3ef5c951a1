"""Filesystem: read inputs and existing state, write output/ atomically with the right modes."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .errors import MaterialError, OutputError
from .spec import Spec

SECRET_MODE = 0o600
PUBLIC_MODE = 0o644
SECRET_DIR_MODE = 0o700


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


def load_bundle(spec: Spec) -> Bundle:
    """Read and check the etcd tarball: it exists, matches etcd.sha256, holds etcd and etcdctl.

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
    problem = _check_release_tarball(data, etcd.version)
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


def ensure_dir(path: Path, mode: int) -> None:
    """Create a directory (and parents) and set its mode."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        if path.stat().st_mode & 0o777 != mode:
            path.chmod(mode)
    except OSError as exc:
        raise OutputError(f"{path}: cannot create: {exc.strerror or exc}") from None
