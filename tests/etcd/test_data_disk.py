"""etcd.data_device on members converged from their seeds: the install script formats a blank disk, mounts it at
/opt/etcd and etcd runs on it; the same seed again leaves it alone, a reboot mounts it again with the data; a disk
that is missing, holds another filesystem or unknown data, or would hide a member on the root disk is refused and
never formatted. The disks are loop devices, each node's /dev/vdb a device node under its scratch root; each
install runs in a mount namespace of its own (ip netns exec), so etcd's view is read through its own process."""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

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
HIDES = ("etcd-seed: ERROR: etcd's data is on the root disk under /opt/etcd, which /dev/vdb would hide: a member is "
         "not moved between disks; mark etcd03 replace: true in cluster.yaml to rebuild it on the new disk")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lab, Disks]]:
    if not TRIXIE.exists():
        pytest.skip(f"make test builds vendor/{TRIXIE.name} with apt-get download")
    if not loop_available():
        pytest.skip("no loop device: losetup -f failed")
    with disk_lab(tmp_path_factory.mktemp("data-disk"), TRIXIE, "dd", "ext4") as lab:
        yield lab


def test_a_blank_disk_is_formatted_and_etcd_runs_on_it(lab: tuple[Lab, Disks]) -> None:
    members, disks = lab
    for name in ("etcd01", "etcd02", "etcd03"):
        log = (members.root(name) / "etc/fstab").read_text()
        assert log == f"{DEVICE} /opt/etcd ext4 defaults,nofail,x-systemd.device-timeout=30s 0 2\n"
        device = members.root(name) / DEVICE.lstrip("/")
        assert etcd_mount(members, name).split() == [str(device), "ext4", "etcd-data"], etcd_mount(members, name)
        assert os.stat(device).st_rdev == os.stat(disks.loops[name]).st_rdev
        unit = (members.root(name) / "etc/systemd/system/etcd.service").read_text()
        assert "RequiresMountsFor=/opt/etcd/data /opt/etcd/wal\n" in unit
        # The node names the disk its member is on, and the disk the member it holds.
        assert claim_file(members, name).read_text() == f"UUID={fs_uuid(disks.loops[name])}\n"
        owner = subprocess.run(["nsenter", "-t", str(members.pid(name)), "-m", "cat",
                                str(members.root(name) / "opt/etcd/.etcd-seed-member")], capture_output=True,
                               text=True, check=True).stdout
        token = load_spec(members.spec.read_text(), base_dir=members.work)[0].etcd.token
        assert owner == f"{token} {name}\n"
    assert members.etcdctl("put", "on-the-disk", "1").returncode == 0


def test_the_same_seed_and_a_reboot_keep_the_disk(lab: tuple[Lab, Disks]) -> None:
    members, _ = lab
    assert members.converge("etcd02").endswith("nothing changed; etcd left running")
    stop_etcd(members, "etcd02")  # the node goes down
    done = members.install("etcd02", None, "--boot")  # and at its next boot, the step before etcd
    assert done.returncode == 0, done.stderr
    # Each run here has a mount namespace of its own: as on a boot where systemd gave up on the disk (a device that
    # came up late) and failed etcd's start with it, the step mounts the disk, and must queue etcd's start again.
    assert "formatted" not in done.stderr and done.stderr.splitlines()[-1].endswith(
        "nothing changed; etcd starts next (queued again: systemd's mount of /dev/vdb had failed before this step "
        "checked and mounted it)"), done.stderr
    members.wait_healthy()  # nothing else started it
    read = members.etcdctl("get", "--consistency=s", "--print-value-only", "on-the-disk", endpoints=["10.234.0.2"])
    assert read.stdout.strip() == "1", read.stderr


# Cases of a first install, before any member data was on a disk: the node has no claim yet.
FIRST_INSTALL = ("other-fs", "data", "another-member", "another-cluster")


@pytest.mark.parametrize("case", ["missing", "other-fs", "data", "member-on-root", "ours-over-member-on-root",
                                  "swapped", "renamed-blank", "another-member", "another-cluster"])
def test_a_disk_that_is_not_blank_or_ours_is_never_formatted(lab: tuple[Lab, Disks], case: str) -> None:
    """Refused, with neither the disk nor fstab written. `ours-over-member-on-root`: a disk already formatted
    etcd-data would hide the member on the root disk (fstab was written before the refusal, and the next boot
    mounted it over the member). `swapped`: the kernel's names moved, /dev/vdb is now a blank disk while the
    member's own disk is mounted (it was formatted, then refused). `renamed-blank`: the same at a boot, with the
    member's disk not mounted: it was formatted, and etcd started an empty member. `another-member` and
    `another-cluster`: an etcd-data disk whose owner file names another member or another cluster's token; etcd
    does not start on it either, should systemd mount it."""
    members, disks = lab
    spare = f"spare-{case}"
    disks.attach(spare)
    image = disks.work / f"{spare}.img"
    fstab = members.root("etcd03") / "etc/fstab"
    kept = fstab.read_bytes()
    if case == "ours-over-member-on-root":  # a member on the root disk has no line for /opt/etcd
        fstab.write_text("/dev/vda / ext4 defaults 0 1\n")
    fstab_before = fstab.read_bytes()
    home = members.root("etcd03") / "opt/etcd"
    token = load_spec(members.spec.read_text(), base_dir=members.work)[0].etcd.token
    owner = {"another-member": f"{token} etcd01", "another-cluster": "tok-of-another-cluster etcd03"}.get(case)
    if case == "other-fs":
        subprocess.run(["mkfs.ext4", "-q", "-L", "photos", disks.loops[spare]], check=True)
    elif case in ("ours-over-member-on-root", "another-member", "another-cluster"):
        format_as(disks.loops[spare], owner)
    elif case == "data":
        with open(image, "r+b") as handle:
            handle.seek(4096)
            handle.write(b"someone's data")
    before = image.read_bytes()[:1 << 20]
    claimed = claim_file(members, "etcd03").read_text().strip().removeprefix("UUID=")
    assert claimed == fs_uuid(disks.loops["etcd03"])
    stop_etcd(members, "etcd03")
    hidden = members.root("etcd03") / "opt/etcd/data/member"
    try:
        disks.plug(members, "etcd03", None if case == "missing" else spare)
        if case in ("member-on-root", "ours-over-member-on-root"):
            hidden.mkdir(parents=True)
        if case == "swapped":  # the member's own disk stays mounted, as it is on the running node
            subprocess.run(["mount", disks.loops["etcd03"], str(home)], check=True)
        with claim_as(members, "etcd03", None) if case in FIRST_INSTALL else contextlib.nullcontext():
            done = members.install("etcd03", None, "--boot")
            after = image.read_bytes()[:1 << 20]  # before systemd (the stand-in) mounts what fstab names
            # etcd.service requires the mount: systemd (here the stand-in) does not start etcd on the root disk,
            # and its start step refuses a disk of another member, which systemd's mount would give it.
            shim_log = members.root("etcd03") / "run/shim/etcd.log"
            logged = shim_log.stat().st_size
            started = members.systemctl("etcd03", "start", "etcd.service") \
                if case in ("missing", "another-member", "another-cluster") else None
            if started is not None and case != "missing":  # mounted: etcd's start step answers, then pauses
                deadline = time.monotonic() + 60
                while "etcd-seed: ERROR: the disk at" not in shim_log.read_text()[logged:] and \
                        time.monotonic() < deadline:
                    time.sleep(0.2)
                members.systemctl("etcd03", "stop", "etcd.service")
            start_log = shim_log.read_text()[logged:]
    finally:
        written = fstab.read_bytes()
        fstab.write_bytes(kept)
        if case == "swapped":
            subprocess.run(["umount", str(home)], check=True)
        if case in ("member-on-root", "ours-over-member-on-root"):
            hidden.rmdir()
        disks.plug(members, "etcd03", "etcd03")
        assert members.install("etcd03", None, "--boot").returncode == 0
        assert members.systemctl("etcd03", "start", "etcd.service").returncode == 0
    expected = {
        "missing": "etcd-seed: ERROR: the data device /dev/vdb is missing; etcd's data goes there and never on the "
                   "root disk, so etcd is not started",
        "other-fs": "etcd-seed: ERROR: the data device /dev/vdb holds a ext4 filesystem labelled 'photos', not the "
                    "ext4 filesystem etcd-data this tool makes; refusing to format it",
        "data": "etcd-seed: ERROR: the data device /dev/vdb holds data but no filesystem; refusing to format it",
        "member-on-root": HIDES,
        "ours-over-member-on-root": HIDES,
        "swapped": f"etcd-seed: ERROR: /opt/etcd is mounted from another device than /dev/vdb "
                   f"({disks.loops['etcd03']}); etcd's data stays where it is: mark etcd03 replace: true in "
                   "cluster.yaml to rebuild it on the new disk",
        "renamed-blank": f"etcd-seed: ERROR: the data device /dev/vdb is not the disk that holds etcd03's data (the "
                         f"filesystem with UUID {claimed}) but no filesystem: a disk renamed at boot, or lost; "
                         f"attach the member's disk as /dev/vdb (/dev/disk/by-uuid/{claimed} names it for good), "
                         "or mark etcd03 replace: true in cluster.yaml to rebuild it on a new disk",
        "another-member": f"etcd-seed: ERROR: the data device /dev/vdb holds the data of another member (cluster "
                          f"token and member: {owner}), not of etcd03 ({token} etcd03); attach etcd03's own disk, "
                          "or a blank one and mark etcd03 replace: true in cluster.yaml",
        "another-cluster": f"etcd-seed: ERROR: the data device /dev/vdb holds the data of another member (cluster "
                           f"token and member: {owner}), not of etcd03 ({token} etcd03); attach etcd03's own "
                           "disk, or a blank one and mark etcd03 replace: true in cluster.yaml",
    }[case]
    assert done.returncode == 1 and done.stderr.strip().splitlines()[-1] == expected + "; nothing installed or " \
        "changed", done.stderr
    assert after == before  # not a byte written
    assert written == fstab_before
    if case == "missing":
        assert started is not None and started.returncode == 1
        assert "shim: dependency failed: cannot mount /dev/vdb at /opt/etcd for /opt/etcd/data" in start_log
    elif started is not None:  # mounted, and refused by etcd's start step: etcd never ran on it
        assert f"etcd-seed: ERROR: the disk at /opt/etcd is not this member's data disk: its owner file " \
               f"says {owner!r}, this member is '{token} etcd03'" in start_log, start_log
    members.wait_healthy()


def test_a_damaged_filesystem_that_systemd_refused_is_not_mounted_at_boot(lab: tuple[Lab, Disks]) -> None:
    """At boot, systemd's fsck refuses a filesystem with errors `fsck -p` does not repair, and its mount fails: the
    boot step, which then mounts the disk itself, must check it the same way and leave etcd off."""
    members, disks = lab
    disks.attach("damaged")
    device = disks.loops["damaged"]
    subprocess.run(["mkfs.ext4", "-q", "-L", "etcd-data", device], check=True)
    for request in ("mkdir junk", "sif junk mode 0", "ssv state 2"):  # an inode of no type: fsck -p stops there
        subprocess.run(["debugfs", "-w", "-R", request, device], capture_output=True, check=True)
    stop_etcd(members, "etcd03")
    calls = len(members.calls("etcd03"))
    try:
        disks.plug(members, "etcd03", "damaged")
        with claim_as(members, "etcd03", f"UUID={fs_uuid(device)}\n"):  # the member's own disk, damaged
            done = members.install("etcd03", None, "--boot")
    finally:
        disks.plug(members, "etcd03", "etcd03")
        assert members.install("etcd03", None, "--boot").returncode == 0
    assert done.returncode == 1, done.stderr
    assert "etcd-seed: ERROR: fsck -p found errors on /dev/vdb that it does not repair (exit 4" in done.stderr
    assert "repair the filesystem by hand, or mark etcd03 replace: true on a new disk; nothing installed or changed" \
        in done.stderr, done.stderr
    started = [c for c in members.calls("etcd03")[calls:] if c.startswith("start etcd.service")]
    assert len(started) == 1, members.calls("etcd03")[calls:]  # only by the boot with its own disk back
    members.wait_healthy()


def test_a_mkfs_cut_short_is_made_again(lab: tuple[Lab, Disks]) -> None:
    """A power cut during mkfs (here mkfs writes a few bytes, then the step is killed as a cut would) leaves a disk
    that is neither blank nor a filesystem. The record the step wrote before mkfs says it is its own: the next run
    formats it again. Before, every later run refused the disk ("holds data but no filesystem") for good."""
    members, disks = lab
    disks.attach("cut")
    device = disks.loops["cut"]
    tools = members.work / "cut-mkfs"
    tools.mkdir()
    (tools / "mkfs.ext4").write_text(
        '#!/bin/sh\nfor last; do :; done\nprintf half-made | dd of="$last" bs=1 seek=4096 conv=notrunc 2>/dev/null\n'
        'pkill -KILL -f "$ETCD_SEED_ROOT/usr/local/sbin/etcd-seed-install"; exit 137\n')
    held = members.work / "held"
    held.mkdir()
    # etcd stays off on the new disk: this is etcd03's own member, whose disk comes back below.
    (held / "systemctl").write_text(
        f'#!/bin/sh\ncase "$*" in *etcd.service*) [ "$1" = start ] || [ "$1" = restart ] && exit 0;; esac\n'
        f'exec {members.shim_dir}/systemctl "$@"\n')
    for tool in (tools / "mkfs.ext4", held / "systemctl"):
        tool.chmod(0o755)
    marker = members.root("etcd03") / "var/lib/etcd-seed/formatting"
    stop_etcd(members, "etcd03")
    try:
        disks.plug(members, "etcd03", "cut")
        with claim_as(members, "etcd03", None):  # a first install
            killed = members.install("etcd03", None, "--boot", path=str(tools))
            assert killed.returncode != 0 and "etcd-seed: formatting /dev/vdb (ext4)\n" in killed.stderr, \
                killed.stderr
            assert marker.read_text().split()[0] == DEVICE
            assert subprocess.run(["blkid", "-p", device], capture_output=True, check=False).returncode == 2  # no fs
            again = members.install("etcd03", None, "--boot", path=str(held))
            probe = subprocess.run(["blkid", "-p", "-o", "export", device], capture_output=True, text=True,
                                   check=False)
            claimed = claim_file(members, "etcd03").read_text()
    finally:
        disks.plug(members, "etcd03", "etcd03")
        assert members.install("etcd03", None, "--boot").returncode == 0
        assert members.systemctl("etcd03", "start", "etcd.service").returncode == 0
    assert again.returncode == 0, again.stderr
    assert "etcd-seed: formatting /dev/vdb (ext4) again: a power cut stopped the last mkfs\n" in again.stderr
    assert "TYPE=ext4" in probe.stdout and "LABEL=etcd-data" in probe.stdout, probe.stdout
    assert claimed == f"UUID={fs_uuid(device)}\n"  # from now on, the node's member is on that disk
    assert not marker.exists()
    members.wait_healthy()


def test_the_formatting_record_never_formats_a_filesystem_and_a_failed_mkfs_drops_it(lab: tuple[Lab, Disks]) -> None:
    """The record of a cut mkfs matches the member's own disk (same path, size and serial), which holds its data:
    the disk shows a filesystem, so it is mounted, not formatted, and the record goes. A mkfs that fails (not a cut)
    leaves no record, so the next run refuses what it left instead of formatting whatever is there."""
    members, disks = lab
    marker = members.root("etcd03") / "var/lib/etcd-seed/formatting"
    device = members.root("etcd03") / DEVICE.lstrip("/")
    assert members.etcdctl("put", "kept-through-the-record", "1").returncode == 0
    size = subprocess.run(["blockdev", "--getsize64", str(device)], capture_output=True, text=True,
                          check=True).stdout.strip()
    stop_etcd(members, "etcd03")
    marker.write_text(f"{DEVICE} {size}\n")  # a loop device has no serial
    done = members.install("etcd03", None, "--boot")
    assert done.returncode == 0, done.stderr
    assert "formatting" not in done.stderr and not marker.exists(), done.stderr
    members.wait_healthy()
    read = members.etcdctl("get", "--consistency=s", "--print-value-only", "kept-through-the-record",
                           endpoints=["10.234.0.3"])
    assert read.stdout.strip() == "1", read.stderr

    disks.attach("failing")
    tools = members.work / "failing-mkfs"
    tools.mkdir()
    (tools / "mkfs.ext4").write_text("#!/bin/sh\necho 'mkfs.ext4: no space left on device' >&2\nexit 1\n")
    (tools / "mkfs.ext4").chmod(0o755)
    stop_etcd(members, "etcd03")
    try:
        disks.plug(members, "etcd03", "failing")
        with claim_as(members, "etcd03", None):  # a first install
            failed = members.install("etcd03", None, "--boot", path=str(tools))
    finally:
        disks.plug(members, "etcd03", "etcd03")
        assert members.install("etcd03", None, "--boot").returncode == 0
        assert members.systemctl("etcd03", "start", "etcd.service").returncode == 0
    assert failed.returncode == 1 and "ERROR: mkfs.ext4 on /dev/vdb failed: mkfs.ext4: no space left on device" in \
        failed.stderr, failed.stderr
    assert not marker.exists()
    members.wait_healthy()


def test_a_disk_formatted_by_an_earlier_seed_is_adopted(lab: tuple[Lab, Disks]) -> None:
    """A member's disk from before disks carried their owner (and the node its UUID record): the next run of the
    step writes both for the disk it mounts, and the member runs on with its data."""
    members, disks = lab
    assert members.etcdctl("put", "before-adoption", "1").returncode == 0
    stop_etcd(members, "etcd03")
    with tempfile.TemporaryDirectory() as where:
        subprocess.run(["mount", disks.loops["etcd03"], where], check=True)
        try:
            Path(where, ".etcd-seed-member").unlink()
        finally:
            subprocess.run(["umount", where], check=True)
    claim_file(members, "etcd03").unlink()
    done = members.install("etcd03", None, "--boot")
    assert done.returncode == 0, done.stderr
    assert claim_file(members, "etcd03").read_text() == f"UUID={fs_uuid(disks.loops['etcd03'])}\n"
    assert members.systemctl("etcd03", "start", "etcd.service").returncode == 0
    members.wait_healthy()
    read = members.etcdctl("get", "--consistency=s", "--print-value-only", "before-adoption",
                           endpoints=["10.234.0.3"])
    assert read.stdout.strip() == "1", read.stderr
