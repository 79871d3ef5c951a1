"""Proof by boot: day 1 the way users boot Debian 13, then backup, replace, join and restore, each by seeds
and reboots alone, no etcdctl by hand.

Three Debian 13 guests (cloud-init 25, netplan and systemd-networkd, no ifupdown) boot on the example's
etcd 3.5.16 (restore needs etcdutl --bump-revision): each seed a SATA CD-ROM on a q35 machine, the etcd
tarball fetched through etcd.url from a web server in the test network, the clock from a time server
there (network.ntp) with each guest's RTC a day behind, and etcd's data on a second disk.
The scenarios share that cluster, in this order, and each also runs alone (`make e2e E2E_K=replace`):
the first boot's facts (Debian 13, the clock, the data disk); a backup taken by the generated unit;
node 3 lost and replaced on a fresh disk; a fourth node that joins by itself and is then scaled back in
with the command the build prints; and every node lost, then restored from a snapshot on fresh disks.
Each prints its time. Every ssh checks host keys against the build's known_hosts.
A CA rotation re-seeds as the rolling pass of test_boot.py does (files changed, a reboot, the boot step,
etcd started once); its three phases run on real etcd in tests/etcd/test_trust_cluster.py, with each
check this module made when it rebooted VMs nine times for them.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import subprocess
import time
from collections.abc import Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from generator import _cli
from generator.loader import load_spec
from tests.helpers.etcd_checks import all_voting, assert_all_healthy, assert_members_are_the_spec
from tests.helpers.specs import ROOT
from tests.helpers.vm import (
    BOOT_TIMEOUT_S,
    BUNDLE,
    CLOCK_WAITING,
    ETCDCTL,
    HUB_IP,
    NEEDS,
    NODES,
    SUBNET,
    VM,
    Lab,
    assert_node_state,
    blank_disk,
    boot_step_line,
    booted_lab,
    overlay,
    reseed_reboot,
    served_serial,
    ssh_argv,
    wait_for,
)

pytestmark = NEEDS
# Each node's power cuts, one boot after another (tests/helpers/vm.py, MOMENTS and moment()). "install-url"
# lands after the install step formatted the data disk: the next boot finds the disk formatted.
FIRST_BOOT_CUTS = ("init+install-url", "config+install-url", "mkfs")
SNAPSHOT_NAME = re.compile(r"etcd0[0-9]-[0-9]{8}T[0-9]{6}Z-rev([0-9]+)-c([0-9]+)\.db")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """Three Debian 13 nodes on the example's etcd, booted from their seeds. Each first boot loses power at a
    moment of its own (cloud-init's init stage, its config stage, the install step's mkfs), and two of the nodes
    again at a random moment of the install step in the boot after; the next boot must end in a healthy member:
    cloud-init had marked modules as run whose work the cut lost."""
    assert BUNDLE.exists(), "make e2e builds vendor/ first"
    url = f"http://{HUB_IP}:8081/{BUNDLE.name}"
    with booted_lab(tmp_path_factory.mktemp("e2e-membership"), BUNDLE, suite="trixie", url=url, cdrom=True,
                    ntp=True, data_disk=True, cuts=FIRST_BOOT_CUTS) as booted:
        yield booted


def _build(lab: Lab, *extra: str, step: str | None = None) -> str:
    spec_file = lab.work / "cluster.yaml"
    out, err = io.StringIO(), io.StringIO()
    command = ["rotate-ca", step] if step else ["build"]
    code = _cli.main([*command, "--spec", str(spec_file), "--out", str(lab.work / "out"), *extra], out, err)
    assert code == 0, err.getvalue()
    lab.spec, _ = load_spec(spec_file.read_text(), base_dir=lab.work)
    return out.getvalue()


def _edit_spec(lab: Lab, old: str, new: str) -> None:
    spec_file = lab.work / "cluster.yaml"
    text = spec_file.read_text()
    assert old in text, old
    spec_file.write_text(text.replace(old, new, 1))


def _members(lab: Lab, endpoints: list[str] | None = None) -> list[dict[str, object]]:
    done = lab.etcdctl("member", "list", "-w", "json", endpoints=endpoints)
    assert done.returncode == 0, done.stderr
    members: list[dict[str, object]] = json.loads(done.stdout)["members"]
    return members


def _status(lab: Lab) -> list[dict[str, object]]:
    done = lab.etcdctl("endpoint", "status", "-w", "json")
    assert done.returncode == 0, done.stderr
    return [s["Status"] for s in json.loads(done.stdout)]


def _revision(lab: Lab) -> int:
    return max(int(s["header"]["revision"]) for s in _status(lab))  # type: ignore[index]


def _fresh_disk(lab: Lab, vm: VM, tag: str) -> None:
    """The VM is gone with its disks: a new overlay of the guest image and a blank data disk take their place."""
    vm.kill()
    vm.disk = overlay(lab.image, lab.work / f"{vm.name}-{tag}.qcow2")
    vm.data_disk = blank_disk(lab.work / f"{vm.name}-{tag}-data.qcow2")


def _data_mount(lab: Lab, vm: VM) -> list[str]:
    """findmnt of /opt/etcd on the node: source, filesystem, label."""
    return lab.ssh(vm.ip, "findmnt -n -o SOURCE,FSTYPE,LABEL /opt/etcd").stdout.split()


def test_debian13_cluster_is_healthy(lab: Lab) -> None:
    """Three Debian 13 members seeded from CD-ROMs form a healthy cluster over mutual TLS."""
    assert_all_healthy(lab.etcdctl, NODES)
    assert_members_are_the_spec(lab.etcdctl, lab.spec)


@pytest.mark.parametrize("index", range(NODES))
def test_debian13_node_state(lab: Lab, index: int) -> None:
    """Each node: the same facts as on Debian 12, a default route through netplan and networkd, the seed
    found on /dev/sr0, no ifupdown, and the tarball downloaded and checked, not read from the seed."""
    assert_node_state(lab, index)
    vm = lab.vms[index]
    facts = lab.ssh(vm.ip, "sudo blkid -t LABEL=cidata -o device; command -v ifup || echo no-ifupdown; "
                              "networkctl list --no-legend; cloud-init --version 2>&1; "
                              "sudo grep -a 'etcd-seed: applied' /var/log/cloud-init-output.log; "
                              "sudo journalctl -b -u etcd-seed-boot -o cat --no-pager").stdout
    assert facts.splitlines()[0] == "/dev/sr0", facts
    assert "no-ifupdown" in facts and " routable " in facts and "configured" in facts, facts
    assert "cloud-init 25." in facts, facts
    version = lab.spec.etcd.version
    if "install-url" in FIRST_BOOT_CUTS[index]:
        # Cut inside its install step: the next run finished the install (runcmd, or this boot's boot step), or
        # found it finished by the cut run, whose report the cut lost.
        assert f"etcd-seed: applied etcd {version}: " in facts, facts
    else:
        assert f"etcd-seed: applied etcd {version}: etcd (none) -> {version}" in facts, facts
    log = (lab.work / "http.log").read_text()
    assert f'"GET /{lab.spec.etcd.tarball_name} HTTP/1.1" 200' in log and vm.ip in log, log[-2000:]


STAMP = re.compile(r"^\[\s*([0-9.]+)\] (.*)$")  # journalctl -o short-monotonic: seconds since this boot


def _first(journal: list[tuple[float, str]], text: str) -> float:
    found = [at for at, line in journal if text in line]
    assert found, f"no {text!r} in the journal:\n" + "\n".join(line for _, line in journal)
    return found[0]


def test_debian13_clock_synchronised_before_etcd_started(lab: Lab) -> None:
    """cloud-init's ntp module points systemd-timesyncd at the hub; each node's clock step holds etcd until
    timesyncd has set the clock from it (the RTC was a day behind, older than the certificates), and says so."""
    waited = []
    for vm in lab.vms:
        done = lab.ssh(vm.ip, "sudo journalctl -b -o short-monotonic --no-pager -u systemd-timesyncd.service "
                                 "-u etcd-seed-clock.service -u etcd.service; echo; date +%s; "
                                 "sudo grep -ah -e 'NTP client' -e 'cc_ntp' /var/log/cloud-init.log | cut -c1-300; "
                                 "cat /etc/systemd/timesyncd.conf.d/cloud-init.conf")
        assert done.returncode == 0, done.stderr
        now = time.time()
        text, after = done.stdout.split("\n\n", 1)
        journal = [(float(m.group(1)), m.group(2)) for m in map(STAMP.match, text.splitlines()) if m]
        synced = _first(journal, f"Contacted time server {HUB_IP}:123")
        said = _first(journal, "etcd-seed: clock: synchronised after")
        started = _first(journal, "Started etcd.service")
        # timesyncd sets the clock, then logs the contact: the clock step may see it a few milliseconds first.
        assert synced - 1.0 <= said <= started, (synced, said, started)
        assert not [line for _, line in journal if "WARNING: clock" in line]
        guest = int(after.split("\n", 1)[0])
        assert abs(guest - now) < 15, f"{vm.name}: guest clock {guest}, host {now:.0f}"
        assert f"NTP={HUB_IP}" in after, after
        if any(CLOCK_WAITING in line for _, line in journal):
            waited.append(vm.name)
        print(f"\nbench: {vm.name}: time server contacted at {synced:.1f} s, clock step done at {said:.1f} s, "
              f"etcd started at {started:.1f} s (seconds since boot); guest clock off by {guest - now:+.0f} s")
        print("\n".join(line for _, line in journal if "etcd-seed: clock" in line or "time server" in line))
        print("\n".join(line for line in after.splitlines() if "ntp" in line.lower())[:1500])
    assert waited, "no node's clock step waited: the time server was up before any asked"


def test_etcd_data_is_on_the_data_disk(lab: Lab) -> None:
    """Every node formatted its blank second disk on its first boot and etcd's data and WAL are on it. A node
    whose install step lost power after formatting finds the disk formatted in its next boot; the others report
    the formatting."""
    for vm, cuts in zip(lab.vms, FIRST_BOOT_CUTS, strict=True):
        mount = _data_mount(lab, vm)
        print(f"{vm.name}: findmnt /opt/etcd: {' '.join(mount)}")
        assert mount == ["/dev/vdb", "ext4", "etcd-data"], mount
        facts = lab.ssh(vm.ip, "sudo findmnt -n -o TARGET --target /opt/etcd/data/member/snap/db; "
                               "sudo findmnt -n -o TARGET --target /opt/etcd/wal; "
                               "sudo grep -a 'formatted /dev/disk/by-id/virtio-etcd-data (ext4)' "
                               "/var/log/cloud-init-output.log | head -n 1")
        lines = facts.stdout.splitlines()
        assert lines[:2] == ["/opt/etcd", "/opt/etcd"], facts.stdout
        if "install-url" not in cuts:
            assert "etcd-seed: applied etcd " in lines[2], facts.stdout


def test_missing_data_disk_keeps_etcd_off_and_says_why(lab: Lab) -> None:
    """A node rebooted without its data disk does not start etcd on the root disk, and its boot step says why;
    with the disk back it rejoins with its data, not formatted again, even on a boot where systemd gave up on the
    disk (here: an fstab line naming another device) and failed etcd's start with it: the boot step mounts the
    disk and queues etcd's start again."""
    vm = lab.vms[1]
    assert lab.etcdctl("put", "disk/kept", "yes").returncode == 0
    vm.kill()
    disk, vm.data_disk = vm.data_disk, None
    vm.start(lab.net, lab.image, lab.accel)
    wait_for(f"{vm.name} to answer ssh", lambda: lab.ssh(vm.ip, "true").returncode == 0, BOOT_TIMEOUT_S, [vm])
    # The mount waits x-systemd.device-timeout (30 s) for the disk, then systemd gives etcd up; the boot step,
    # ordered after the mount, then waits 10 s more for the disk and says why.
    journal = ("sudo journalctl -b -u etcd.service -u etcd-seed-boot --no-pager -o cat | grep -q 'etcd-seed: ERROR' "
               "&& sudo journalctl -b -u etcd.service --no-pager -o cat")
    wait_for("etcd.service to give up on its mount, and the boot step to say why",
             lambda: "Dependency failed" in lab.ssh(vm.ip, journal).stdout, 180, [vm])
    facts = lab.ssh(vm.ip, "systemctl is-active etcd.service; sudo test -e /opt/etcd/data && echo ROOT-DATA; "
                           "sudo journalctl -b -u etcd-seed-boot --no-pager -o cat | grep 'etcd-seed: ERROR'; "
                           "sudo journalctl -b -u etcd.service --no-pager -o cat | grep -i dependency")
    print(f"e2e: {vm.name} without its data disk:\n{facts.stdout}")
    assert facts.stdout.splitlines()[0] != "active" and "ROOT-DATA" not in facts.stdout, facts.stdout
    assert "etcd-seed: ERROR: the data device /dev/disk/by-id/virtio-etcd-data is missing" in facts.stdout
    assert "Dependency failed" in facts.stdout, facts.stdout
    # systemd's mount of the next boot waits for a device that never comes, gives up, and fails etcd's start.
    bent = lab.ssh(vm.ip, "sudo sed -i 's|^/dev/disk/by-id/virtio-etcd-data |/dev/disk/by-id/virtio-no-such-disk |' "
                          "/etc/fstab && sync && grep -c no-such-disk /etc/fstab")
    assert bent.stdout.strip() == "1", bent.stdout + bent.stderr
    vm.kill()
    vm.data_disk = disk
    vm.start(lab.net, lab.image, lab.accel)
    wait_for(f"{vm.name} to rejoin with its data disk", lambda: lab.etcdctl(
        "endpoint", "health", endpoints=[vm.ip]).returncode == 0, BOOT_TIMEOUT_S, [vm])
    got = lab.etcdctl("get", "--consistency=s", "--print-value-only", "disk/kept", endpoints=[vm.ip])
    assert got.stdout.strip() == "yes", got.stderr
    line = boot_step_line(lab, vm)
    print(f"e2e: {vm.name} after systemd gave up on its data disk: {line}")
    assert "formatted" not in line and "fstab" in line, line
    assert line.endswith("etcd starts next (queued again: systemd's mount of /dev/disk/by-id/virtio-etcd-data had "
                         "failed before this step checked and mounted it)"), line
    journal = lab.ssh(vm.ip, "sudo journalctl -b -u etcd.service --no-pager -o cat").stdout
    assert "Dependency failed" in journal, journal[-2000:]
    assert _data_mount(lab, vm) == ["/dev/vdb", "ext4", "etcd-data"]


def _public_key(cert_pem: bytes) -> bytes:
    return x509.load_pem_x509_certificates(cert_pem)[0].public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def test_backup_unit_takes_a_checked_snapshot(lab: Lab) -> None:
    """`systemctl start etcd-backup.service` on a node writes <time>-rev<revision>-c<cluster ID>.db, 0600 and owned
    by etcd, at or past the last write; the timer is enabled."""
    vm = lab.vms[0]
    for i in range(5):
        assert lab.etcdctl("put", f"backup/{i}", str(i)).returncode == 0
    last = _revision(lab)
    began = time.monotonic()
    done = lab.ssh(vm.ip, "sudo systemctl start etcd-backup.service && sudo ls /var/backups/etcd && "
                          "systemctl is-enabled etcd-backup.timer && systemctl is-active etcd-backup.timer")
    assert done.returncode == 0, done.stdout + done.stderr
    print(f"\nbench: backup unit run on {vm.name}: {time.monotonic() - began:.1f} s (including ssh)")
    names = [n for n in done.stdout.split() if SNAPSHOT_NAME.fullmatch(n)]
    assert len(names) == 1 and done.stdout.split()[-2:] == ["enabled", "active"], done.stdout
    path = f"/var/backups/etcd/{names[0]}"
    facts = lab.ssh(vm.ip, f"sudo stat -c '%a %U %G' {path}; "
                           f"sudo /usr/local/bin/etcdutl snapshot status -w json {path}")
    mode, status = facts.stdout.splitlines()[0], json.loads(facts.stdout.splitlines()[1])
    assert mode == "600 etcd etcd"
    revision = int(SNAPSHOT_NAME.fullmatch(names[0]).group(1))  # type: ignore[union-attr]
    assert status["revision"] == revision >= last
    log = lab.ssh(vm.ip, "sudo journalctl -u etcd-backup.service --no-pager -o cat")
    assert f"etcd-seed: backup: {path} (" in log.stdout, log.stdout


def test_defrag_unit_shrinks_the_database(lab: Lab) -> None:
    """`systemctl start etcd-defrag.service` on a node defragments its member once compaction has freed most of
    the file, and logs one line; its timer is enabled with the node's own minute."""
    vm = lab.vms[1]
    value = base64.b64encode(os.urandom(600 << 10)).decode()  # 800 KiB that no page can share
    for i in range(8):
        assert lab.etcdctl("put", f"big/{i}", stdin=value, timeout="30s").returncode == 0
    assert lab.etcdctl("del", "--prefix", "big/").returncode == 0
    assert lab.etcdctl("compact", "--physical", str(_revision(lab)), endpoints=[vm.ip]).returncode == 0

    def compacted() -> bool:
        # bbolt counts a freed page as in use until a later write commits: write, and wait until etcd reports it free.
        lab.etcdctl("put", "defrag-nudge", "x")
        status = json.loads(lab.etcdctl("endpoint", "status", "-w", "json", endpoints=[vm.ip]).stdout)[0]["Status"]
        return bool(status["dbSizeInUse"] * 2 < status["dbSize"])
    wait_for("the compaction to free most of the file", compacted, 60, [vm])
    size = "sudo stat -c %s /opt/etcd/data/member/snap/db"
    before = int(lab.ssh(vm.ip, size).stdout)
    began = time.monotonic()
    done = lab.ssh(vm.ip, "sudo systemctl start etcd-defrag.service && systemctl is-enabled etcd-defrag.timer && "
                          "systemctl show -p TimersCalendar etcd-defrag.timer")
    assert done.returncode == 0, done.stdout + done.stderr
    print(f"\nbench: defrag unit run on {vm.name}: {time.monotonic() - began:.1f} s (including ssh)")
    after = int(lab.ssh(vm.ip, size).stdout)
    print(f"{vm.name}: database file {before} -> {after} bytes")
    assert before > 6 << 20 and after * 4 < before
    assert "enabled" in done.stdout and "OnCalendar=*-*-* 03:40:00" in done.stdout, done.stdout
    log = lab.ssh(vm.ip, "sudo journalctl -u etcd-defrag.service --no-pager -o cat | grep etcd-seed:")
    assert log.stdout.strip().startswith(f"etcd-seed: defrag: defragmented {vm.name} ("), log.stdout
    assert_all_healthy(lab.etcdctl, NODES)


def test_replace_lost_member_on_a_fresh_disk(lab: Lab) -> None:
    """Node 3's machine and disk are gone. Marked replace and rebuilt, it boots on an empty disk with a new key,
    removes its stale entry, joins as a learner and promotes itself: three voting members, node 3 with a new ID
    and certificate key, the others unchanged, and every earlier key readable on node 3 alone."""
    victim = lab.vms[2]
    for i in range(20):
        assert lab.etcdctl("put", f"replace/{i:02d}", str(i)).returncode == 0
    before = {m["name"]: m["ID"] for m in _members(lab)}
    old_key = _public_key((lab.pki / "etcd03.crt").read_bytes())
    _fresh_disk(lab, victim, "replaced")
    survivors = [v.ip for v in lab.vms[:2]]
    wait_for("a write through the two survivors", lambda: lab.etcdctl(
        "put", "replace/during", "x", endpoints=survivors).returncode == 0, 90, lab.vms[:2])

    _edit_spec(lab, "{name: etcd03, ", "{name: etcd03, replace: true, ")
    out = _build(lab)
    assert "etcd03 is replaced with a new key" in out, out
    assert _public_key((lab.pki / "etcd03.crt").read_bytes()) != old_key
    victim.start(lab.net, lab.image, lab.accel)
    everyone = [v.ip for v in lab.vms]
    healthy = wait_for("three voting members again", lambda: all_voting(lab.etcdctl, everyone, 3), BOOT_TIMEOUT_S + 180,
                       lab.vms)
    print(f"bench: fresh-disk replacement of {victim.name}, power-on to healthy voting member: "
          f"{healthy - victim.powered_on:.0f} s")
    after = {m["name"]: m["ID"] for m in _members(lab)}
    assert after["etcd01"] == before["etcd01"] and after["etcd02"] == before["etcd02"]
    assert after["etcd03"] != before["etcd03"]
    issued = x509.load_pem_x509_certificates((lab.pki / "etcd03.crt").read_bytes())[0].serial_number
    assert served_serial(lab, victim.ip, 2379, "admin") == issued
    for i in range(20):
        got = lab.etcdctl("get", "--consistency=s", "--print-value-only", f"replace/{i:02d}", endpoints=[victim.ip])
        assert got.stdout.strip() == str(i), got.stderr
    journal = lab.ssh(victim.ip, "sudo journalctl -u etcd -u etcd-seed-promote --no-pager -o cat | grep etcd-seed:")
    assert f"etcd-seed: removed the stale member entry {before['etcd03']:x} of etcd03" in journal.stdout, journal
    assert "etcd-seed: promoted etcd03 (member " in journal.stdout, journal.stdout
    print("e2e: etcd03's steps:\n" + journal.stdout)
    _edit_spec(lab, "{name: etcd03, replace: true, ", "{name: etcd03, ")
    _build(lab)  # the marker cleared: etcd03 is a plain member again (its seed changes only member.json)


def test_fourth_node_joins_by_itself_then_scales_in(lab: Lab) -> None:
    """A fourth node booted from a join seed becomes a voting member with no step by hand; then the
    printed member remove command takes it out again and the cluster is three healthy members."""
    name, ip, mac = "etcd04", f"{SUBNET}.4", "52:54:00:e2:00:04"
    _edit_spec(lab, "{name: etcd03, ", f'{{name: {name}, ip: {ip}, mac: "{mac}", join: true}}\n  - {{name: etcd03, ')
    out = _build(lab)
    assert f"{name} joins the running cluster by itself: re-seed etcd01 first, which creates {name}'s etcd user" in out
    # With auth on, the member's etcd user must exist before it adds itself: etcd01's auth step creates it.
    first = lab.vms[0]
    took = reseed_reboot(lab, first, "its auth step to add etcd04's user", lambda: f"user {name} added" in lab.ssh(
        first.ip, "sudo journalctl -b -u etcd-seed-auth --no-pager -o cat").stdout)
    print(f"bench: re-seed of etcd01 for {name}'s etcd user: {took:.0f} s")
    joiner = VM(name, mac, ip, overlay(lab.image, lab.work / f"{name}.qcow2"), lab.work / "out/e2e" / name / "seed.iso",
                lab.work / f"{name}.console", lab.net.add_tap("tap4"),
                data_disk=blank_disk(lab.work / f"{name}-data.qcow2"))
    lab.extra.append(joiner)
    joiner.start(lab.net, lab.image, lab.accel)
    everyone = [v.ip for v in lab.vms] + [ip]
    promoted = wait_for("four voting members", lambda: all_voting(lab.etcdctl, everyone, 4), BOOT_TIMEOUT_S + 180,
                        [*lab.vms, joiner])
    print(f"bench: join of {name}, power-on to promoted voting member: {promoted - joiner.powered_on:.0f} s")
    members = _members(lab, everyone)
    assert sorted(m["name"] for m in members) == ["etcd01", "etcd02", "etcd03", name]  # type: ignore[type-var]
    assert not any(m.get("isLearner") for m in members)
    assert lab.etcdctl("get", "--consistency=s", "--print-value-only", "backup/3", endpoints=[ip]).stdout.strip() \
        in ("3", "")  # present when the backup scenario ran first
    journal = lab.ssh(ip, "sudo journalctl -u etcd -u etcd-seed-promote --no-pager -o cat | grep etcd-seed:")
    assert f"etcd-seed: added {name} as a learner" in journal.stdout, journal.stdout
    print(f"e2e: {name}'s steps:\n" + journal.stdout)

    # Scale back in, as the build says: a four-member cluster tolerates no more failures than three.
    _edit_spec(lab, f'{{name: {name}, ip: {ip}, mac: "{mac}", join: true}}\n  - ', "")
    out = _build(lab)
    note = next(line for line in out.splitlines() if line.startswith(f"{name} left the spec"))
    command = note.split("from pki/, run: ", 1)[1].split(" ; then delete", 1)[0]
    done = subprocess.run(lab.net.command(lab.net.hub, ["sh", "-c", command]), cwd=lab.pki,
                          env={"PATH": f"{ETCDCTL.parent}:/usr/bin:/bin"}, capture_output=True, text=True, timeout=90,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    joiner.kill()
    wait_for("three healthy members", lambda: all_voting(lab.etcdctl, [v.ip for v in lab.vms], 3), 120, lab.vms)


def test_restore_every_member_from_a_snapshot(lab: Lab) -> None:
    """Every node lost. A snapshot copied off a node seeds three fresh disks: each restores it once with a
    revision bump and a new token; every key is back, the revision is past the old one plus the bump, and the
    cluster ID is new. Runs last: it replaces the cluster."""
    for i in range(20):
        assert lab.etcdctl("put", f"restore/{i:02d}", str(i)).returncode == 0
    old_cluster = _status(lab)[0]["header"]["cluster_id"]  # type: ignore[index]
    source = lab.vms[0]
    # The operations guide's "take one now and copy it off", as written: only the address is the test's, and ssh
    # gets the test key and the build's known_hosts (what an operator's ssh config gives it).
    readme = (ROOT / "docs" / "operations.md").read_text().split("Take one now and copy it off:", 1)[1]
    lines = readme.split("```sh\n", 1)[1].split("```", 1)[0].replace("192.168.0.1", source.ip)
    options = " ".join(ssh_argv(lab.key, lab.pki.parent / "known_hosts", source.ip, "")[1:-2])
    script = f"ssh() {{ command ssh {options} \"$@\"; }}\n{lines}"
    done = subprocess.run(lab.net.command(lab.net.hub, ["sh", "-ec", script]), cwd=lab.work, capture_output=True,
                          text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    snapshot = lab.work / "snapshot.db"
    taken = lab.ssh(source.ip, "sudo sh -c 'cd /var/backups/etcd && sha256sum $(ls | tail -n 1)'")
    digest, name = taken.stdout.split()
    assert hashlib.sha256(snapshot.read_bytes()).hexdigest() == digest, name
    revision = int(SNAPSHOT_NAME.fullmatch(name).group(1))  # type: ignore[union-attr]

    for vm in lab.vms:
        _fresh_disk(lab, vm, "restored")
    _edit_spec(lab, "etcd:\n", f"etcd:\n  restore: {{snapshot: {snapshot}}}\n")
    out = _build(lab)
    assert "restore: boot every member on an empty disk" in out
    for vm in lab.vms:
        vm.start(lab.net, lab.image, lab.accel)
    began = min(v.powered_on for v in lab.vms)
    healthy = wait_for("the restored cluster", lambda: lab.etcdctl("endpoint", "health").returncode == 0,
                       BOOT_TIMEOUT_S + 180, lab.vms)
    print(f"bench: restore of {len(lab.vms)} fresh nodes, power-on to healthy cluster: {healthy - began:.0f} s")
    for i in range(20):
        assert lab.etcdctl("get", "--print-value-only", f"restore/{i:02d}").stdout.strip() == str(i)
    status = _status(lab)
    assert all(s["header"]["cluster_id"] != old_cluster for s in status)  # type: ignore[index]
    assert min(int(s["header"]["revision"]) for s in status) >= revision + 1_000_000_000  # type: ignore[index]
    line = lab.ssh(lab.vms[1].ip, "sudo grep -a 'etcd-seed: applied' /var/log/cloud-init-output.log")
    assert "restored snapshot " in line.stdout and "(revision +1000000000)" in line.stdout, line.stdout
