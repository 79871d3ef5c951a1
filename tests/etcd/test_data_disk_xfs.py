"""etcd.data_fs: xfs on members converged from their seeds, as tests/etcd/test_data_disk.py does for ext4: a blank
disk is made an xfs etcd-data filesystem that etcd runs on, and another member's xfs disk is refused with not a
byte of it written (the owner file is read through a read-only mount that replays no log: xfs's norecovery)."""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from generator.loader import load_spec
from tests.helpers.converge import NEEDS, Lab
from tests.helpers.disks import (
    DEVICE,
    Disks,
    claim_as,
    claim_file,
    disk_lab,
    etcd_mount,
    format_as,
    fs_uuid,
    loop_available,
    stop_etcd,
)
from tests.helpers.specs import TRIXIE

pytestmark = NEEDS
XFS_MIB = 512  # mkfs.xfs (xfsprogs 5.19 on) makes no filesystem of 300 MB or less


def _xfs_available() -> str | None:
    """mkfs.xfs, which make test installs; the kernel loads xfs itself at the first mount."""
    return None if shutil.which("mkfs.xfs") else "mkfs.xfs is missing: make test installs xfsprogs"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lab, Disks]]:
    if not TRIXIE.exists():
        pytest.skip(f"make test builds vendor/{TRIXIE.name} with apt-get download")
    if not loop_available():
        pytest.skip("no loop device: losetup -f failed")
    missing = _xfs_available()
    if missing:
        pytest.skip(missing)
    with disk_lab(tmp_path_factory.mktemp("data-disk-xfs"), TRIXIE, "dx", "xfs", XFS_MIB) as lab:
        yield lab


@contextlib.contextmanager
def _first_install_on(members: Lab, disks: Disks, disk: str) -> Iterator[None]:
    """etcd03 stopped, with no record of its disk (as on a first install) and `disk` at DEVICE; then back on
    its own disk, converged and started."""
    stop_etcd(members, "etcd03")
    try:
        with claim_as(members, "etcd03", None):
            disks.plug(members, "etcd03", disk)
            yield
    finally:
        disks.plug(members, "etcd03", "etcd03")
        assert members.install("etcd03", None, "--boot").returncode == 0
        assert members.systemctl("etcd03", "start", "etcd.service").returncode == 0


def test_a_blank_disk_is_formatted_xfs_and_etcd_runs_on_it(lab: tuple[Lab, Disks]) -> None:
    members, disks = lab
    token = load_spec(members.spec.read_text(), base_dir=members.work)[0].etcd.token
    for name in ("etcd01", "etcd02", "etcd03"):
        assert (members.root(name) / "etc/fstab").read_text() == \
            f"{DEVICE} /opt/etcd xfs defaults,nofail,x-systemd.device-timeout=30s 0 2\n"
        device = members.root(name) / DEVICE.lstrip("/")
        assert etcd_mount(members, name).split() == [str(device), "xfs", "etcd-data"], etcd_mount(members, name)
        assert claim_file(members, name).read_text() == f"UUID={fs_uuid(disks.loops[name])}\n"
        owner = subprocess.run(["nsenter", "-t", str(members.pid(name)), "-m", "cat",
                                str(members.root(name) / "opt/etcd/.etcd-seed-member")], capture_output=True,
                               text=True, check=True).stdout
        assert owner == f"{token} {name}\n"
    assert members.etcdctl("put", "on-xfs", "1").returncode == 0


def test_another_members_xfs_disk_is_refused_and_not_written(lab: tuple[Lab, Disks]) -> None:
    """A first install of etcd03 finds a disk that holds etcd01's data: refused by the install step, fstab and
    the disk as they were (its sha256 whole), and etcd03 back on its own disk after."""
    members, disks = lab
    token = load_spec(members.spec.read_text(), base_dir=members.work)[0].etcd.token
    disks.attach("foreign", XFS_MIB)
    format_as(disks.loops["foreign"], f"{token} etcd01", fs="xfs")
    image = disks.work / "foreign.img"
    before = hashlib.sha256(image.read_bytes()).hexdigest()
    fstab = members.root("etcd03") / "etc/fstab"
    fstab_before = fstab.read_bytes()
    with _first_install_on(members, disks, "foreign"):  # no record of its disk: the disk's owner file decides
        done = members.install("etcd03", None, "--boot")
        after = hashlib.sha256(image.read_bytes()).hexdigest()
    assert done.returncode == 1 and done.stderr.strip().splitlines()[-1] == (
        f"etcd-seed: ERROR: the data device /dev/vdb holds the data of another member (cluster token and member: "
        f"{token} etcd01), not of etcd03 ({token} etcd03); attach etcd03's own disk, or a blank one and mark etcd03 "
        "replace: true in cluster.yaml; nothing installed or changed"), done.stderr
    assert after == before, "the refused disk was written"
    assert fstab.read_bytes() == fstab_before
    members.wait_healthy()


def test_a_disk_mkfs_xfs_refuses_is_reported_with_its_reason(lab: tuple[Lab, Disks]) -> None:
    """A blank disk too small for xfs on a first install: the step fails with mkfs's reason (its first line, not
    the usage text that follows it), writes no fstab line, and etcd03 is back on its own disk after."""
    members, disks = lab
    disks.attach("small", 256)
    fstab = members.root("etcd03") / "etc/fstab"
    fstab_before = fstab.read_bytes()
    with _first_install_on(members, disks, "small"):
        done = members.install("etcd03", None, "--boot")
    assert done.returncode == 1 and done.stderr.strip().splitlines()[-1] == (
        "etcd-seed: ERROR: mkfs.xfs on /dev/vdb failed: Filesystem must be larger than 300MB.; nothing installed "
        "or changed"), done.stderr
    assert fstab.read_bytes() == fstab_before
    members.wait_healthy()
