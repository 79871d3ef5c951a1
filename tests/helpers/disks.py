"""Data disks for members converged from their seeds: sparse files attached as loop devices, each node's /dev/vdb
a device node under its scratch root, and what tells which disk a member is on."""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from tests.helpers.converge import Lab, converged_lab

DEVICE = "/dev/vdb"


class Disks:
    """Sparse files attached as loop devices; one per member, and spares for the refusals."""

    def __init__(self, work: Path) -> None:
        self.work, self.loops = work, {}  # type: ignore[var-annotated]

    def attach(self, name: str, mib: int = 256) -> str:
        """A sparse disk of `mib` MiB (etcd preallocates a 64 MB WAL file; mkfs.xfs wants more than 300 MB)."""
        image = self.work / f"{name}.img"
        with open(image, "wb") as handle:
            handle.truncate(mib << 20)
        loop = subprocess.run(["losetup", "-f", "--show", str(image)], capture_output=True, text=True,
                              check=True).stdout.strip()
        self.loops[name] = loop
        return loop

    def plug(self, lab: Lab, node: str, disk: str | None) -> None:
        """Make the node's /dev/vdb the given disk's device node, or take it away."""
        path = lab.root(node) / DEVICE.lstrip("/")
        path.unlink(missing_ok=True)
        if disk is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            rdev = os.stat(self.loops[disk]).st_rdev
            os.mknod(path, 0o600 | 0o060000, os.makedev(os.major(rdev), os.minor(rdev)))

    def close(self) -> None:
        for loop in self.loops.values():
            subprocess.run(["losetup", "-d", loop], check=False)


def claim_file(lab: Lab, name: str) -> Path:
    """The node's record of the filesystem UUID that holds its member (written once the disk is in use)."""
    return lab.root(name) / "var/lib/etcd-seed/data-disk"


def format_as(device: str, owner: str | None, fs: str = "ext4") -> None:
    """An etcd-data filesystem as this tool makes one, with an owner file naming a member when given."""
    subprocess.run([f"mkfs.{fs}", "-q", *(["-f"] if fs == "xfs" else []), "-L", "etcd-data", device], check=True)
    if owner is None:
        return
    with tempfile.TemporaryDirectory() as where:
        subprocess.run(["mount", device, where], check=True)
        try:
            Path(where, ".etcd-seed-member").write_text(owner + "\n")
        finally:
            subprocess.run(["umount", where], check=True)


def fs_uuid(device: str) -> str:
    return subprocess.run(["blkid", "-p", "-o", "value", "-s", "UUID", device], capture_output=True, text=True,
                          check=True).stdout.strip()


def loop_available() -> bool:
    return subprocess.run(["losetup", "-f"], capture_output=True, check=False).returncode == 0


def stop_etcd(lab: Lab, name: str) -> None:
    pid = lab.pid(name)
    os.kill(pid, 15)
    deadline = time.monotonic() + 20
    while Path(f"/proc/{pid}").exists() and b"zombie" not in Path(f"/proc/{pid}/status").read_bytes().lower():
        assert time.monotonic() < deadline, f"{name}'s etcd did not stop"
        time.sleep(0.2)


def etcd_mount(lab: Lab, name: str) -> str:
    """What etcd itself has at /opt/etcd: the source device, from inside its mount namespace."""
    done = subprocess.run(["nsenter", "-t", str(lab.pid(name)), "-m", "findmnt", "-n", "-o", "SOURCE,FSTYPE,LABEL",
                           "--mountpoint", str(lab.root(name) / "opt/etcd")], capture_output=True, text=True,
                          check=False)
    return done.stdout.strip()


@contextlib.contextmanager
def claim_as(lab: Lab, name: str, text: str | None) -> Iterator[None]:
    """The node's claim replaced for a while: None as on a first install (no member on a disk yet), or a text."""
    claim = claim_file(lab, name)
    kept = claim.read_bytes()
    claim.unlink()
    if text is not None:
        claim.write_text(text)
    try:
        yield
    finally:
        claim.write_bytes(kept)


@contextlib.contextmanager
def disk_lab(work: Path, tarball: Path, tag: str, fs: str, mib: int = 256) -> Iterator[tuple[Lab, Disks]]:
    """Three members converged onto a blank `fs` data disk each, at DEVICE (a loop device of `mib` MiB)."""
    disks = Disks(work)

    def prepare(lab: Lab) -> None:
        for name in ("etcd01", "etcd02", "etcd03"):
            (lab.root(name) / "etc").mkdir(parents=True, exist_ok=True)  # a node's /etc, for its fstab
            disks.attach(name, mib)
            disks.plug(lab, name, name)
    try:
        with converged_lab(work / "lab", tarball, "3.5.16", tag, prepare=prepare,
                           etcd_extra=f"  data_device: {DEVICE}\n" + (f"  data_fs: {fs}\n" if fs != "ext4" else "")
                           ) as lab:
            yield lab, disks
    finally:
        disks.close()
