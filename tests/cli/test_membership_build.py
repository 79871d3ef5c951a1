"""What the build does for joins, replacements, backups, a restore, compaction and quota, and every bad input.

Each bad input gets an `error:` line naming its field and nothing is written (or, on a
second build, nothing is changed). The snapshots here are made to pass the build's own
checks (bbolt header and sha256 trailer); tests/etcd/test_membership.py restores real ones.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from generator.etcd import Version, check_snapshot
from generator.iso import read_iso
from tests.helpers.cli import assert_refused, build, run, set_spec
from tests.helpers.specs import fake_snapshot, spec_yaml


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _written(workdir: Path, node: str) -> dict[str, str]:
    """What cloud-init's write_files would write on the node, by path."""
    user_data = yaml.safe_load((workdir / "out/demo" / node / "user-data").read_text())
    return {f["path"]: f["content"] for f in user_data["write_files"]}


def _enabled(written: dict[str, str]) -> list[str]:
    """The units the install script enables (its one `enable=` list), read by sh."""
    script = written["/usr/local/sbin/etcd-seed-install"]
    line = next(line for line in script.splitlines() if line.startswith("enable="))
    done = subprocess.run(["sh", "-c", f'{line}\nprintf "%s\\n" $enable'], capture_output=True, text=True, check=True)
    return done.stdout.split()


def _options(workdir: Path, node: str) -> dict[str, str]:
    text = (workdir / "out/demo" / node / "options.env").read_text()
    return dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))


# --- snapshots ----------------------------------------------------------------------------


def test_snapshot_check_accepts_what_etcdctl_writes() -> None:
    assert check_snapshot(fake_snapshot()) is None


@pytest.mark.parametrize(("mangle", "expected"), [
    (lambda d: b"SQLite format 3\0" + bytes(16) + d[32:], "is not an etcd snapshot (no bbolt database header)"),
    (lambda d: d[:100], "is not an etcd snapshot"),
    (lambda d: d[:-32], "has no sha256 trailer"),
    (lambda d: d[:5000] + b"X" + d[5001:], "is damaged: its contents do not match the sha256"),
], ids=["not-bolt", "truncated", "no-trailer", "flipped-byte"])
def test_bad_snapshot_is_refused_and_nothing_written(workdir: Path, mangle: object, expected: str) -> None:
    (workdir / "snap.db").write_bytes(mangle(fake_snapshot()))  # type: ignore[operator]
    set_spec(workdir, "etcd:\n", "etcd:\n  restore: {snapshot: snap.db, bump_revision: 0}\n")
    err = assert_refused(workdir, "etcd.restore.snapshot")
    assert expected in err


def test_missing_snapshot_is_refused(workdir: Path) -> None:
    set_spec(workdir, "etcd:\n", "etcd:\n  restore: {snapshot: nowhere.db, bump_revision: 0}\n")
    assert "does not exist" in assert_refused(workdir, "etcd.restore.snapshot")


@pytest.mark.parametrize("special", ["/dev/zero", "fifo", "."], ids=["device", "fifo", "directory"])
def test_special_file_as_snapshot_is_refused_unread(workdir: Path, special: str) -> None:
    """A device, a FIFO or a directory is refused before a byte is read: nothing hangs or fills memory."""
    if special == "fifo":
        os.mkfifo(workdir / "fifo")
    set_spec(workdir, "etcd:\n", f"etcd:\n  restore: {{snapshot: '{special}', bump_revision: 0}}\n")
    assert_refused(workdir, "etcd.restore.snapshot")


def test_bump_on_a_release_without_it_is_refused(workdir: Path) -> None:
    """etcd 3.5.1's etcdutl has no --bump-revision: the build says so, and bump_revision: 0 is the way out."""
    (workdir / "snap.db").write_bytes(fake_snapshot())
    set_spec(workdir, "etcd:\n", "etcd:\n  restore: {snapshot: snap.db}\n")
    err = assert_refused(workdir, "etcd.restore.bump_revision")
    assert "etcd 3.5.1 cannot bump revisions on restore" in err and "set bump_revision: 0" in err


def test_restore_seed_carries_the_snapshot_pinned_by_sha256(workdir: Path) -> None:
    snapshot = fake_snapshot()
    sha = hashlib.sha256(snapshot).hexdigest()
    (workdir / "snap.db").write_bytes(snapshot)
    set_spec(workdir, 'version: "3.5.1"', 'version: "3.5.1"\n  restore: {snapshot: snap.db, bump_revision: 0}')
    code, out, err = build(workdir)
    assert code == 0, err
    assert "restore: boot every member on an empty disk" in out
    on_seed = read_iso((workdir / "out/demo/etcd02/seed.iso").read_bytes())
    assert on_seed["snapshot.db"] == snapshot
    script = _written(workdir, "etcd02")["/usr/local/sbin/etcd-seed-install"]
    assert f"[ \"$got\" = {sha} ]" in script
    assert "--initial-cluster-token=demo-b80da7a7f759-r" + sha[:12] in script
    assert "--bump-revision" not in script
    assert _options(workdir, "etcd02")["ETCD_INITIAL_CLUSTER_TOKEN"] == f"demo-b80da7a7f759-r{sha[:12]}"
    manifest = json.loads((workdir / "out/demo/manifest.json").read_text())
    assert manifest["restore"] == {"sha256": sha, "size": len(snapshot)}
    code, _, err = run("verify", "--spec", str(workdir / "cluster.yaml"), "--out", str(workdir / "out"))
    assert code == 0, err


def test_restore_with_a_join_is_refused(workdir: Path) -> None:
    (workdir / "snap.db").write_bytes(fake_snapshot())
    set_spec(workdir, "etcd:\n", "etcd:\n  restore: {snapshot: snap.db, bump_revision: 0}\n")
    set_spec(workdir, '{name: etcd03, ', '{name: etcd03, join: true, ')
    assert "cannot be used with etcd.restore" in assert_refused(workdir, "nodes.2.join")


# --- joins, replacements, scaling in --------------------------------------------------------


def test_join_changes_no_founder_seed_but_the_first(workdir: Path) -> None:
    """A fourth member with join: true: it gets a member.json that names its peers; no founder's file changes but
    the first node's, whose auth step creates the new member's etcd user (and only in its member.json)."""
    assert build(workdir)[0] == 0
    before = _files(workdir / "out/demo")
    set_spec(workdir, '  - {name: etcd03, ip: 192.168.0.3, mac: "52:54:00:00:00:03"}',
             '  - {name: etcd03, ip: 192.168.0.3, mac: "52:54:00:00:00:03"}\n'
             '  - {name: etcd04, ip: 192.168.0.4, mac: "52:54:00:00:00:04", join: true}')
    code, out, err = build(workdir)
    assert code == 0, err
    after = _files(workdir / "out/demo")
    changed = sorted(p for p in before if before[p] != after[p])
    assert changed == ["etcd01/meta-data", "etcd01/seed.iso", "etcd01/user-data", "etcd01/user-data.redacted",
                       "known_hosts", "manifest.json", "pki/etcdctl.env"], changed
    first = json.loads(_written(workdir, "etcd01")["/var/lib/etcd-seed/seed/member.json"])
    assert first["auth"]["users"]["etcd04"] == ["root"]
    assert "etcd04 joins the running cluster by itself: re-seed etcd01 first, which creates etcd04's etcd user" in out
    assert "etcdctl member add etcd04 --peer-urls=https://192.168.0.4:2380 --learner" in out
    config = json.loads(_written(workdir, "etcd04")["/var/lib/etcd-seed/seed/member.json"])
    assert config["mode"] == "join" and config["peers"] == [f"https://192.168.0.{i}:2379" for i in (1, 2, 3)]
    options = _options(workdir, "etcd04")
    assert options["ETCD_INITIAL_CLUSTER_STATE"] == "existing"
    assert options["ETCD_INITIAL_CLUSTER"].endswith(",etcd04=https://192.168.0.4:2380")
    assert "etcd-seed-promote.service" in _enabled(_written(workdir, "etcd04"))
    assert "etcd-seed-promote.service" not in _enabled(_written(workdir, "etcd01"))


@pytest.mark.parametrize("lost", [2, 3])
def test_replace_that_would_lose_quorum_is_refused(workdir: Path, lost: int) -> None:
    """Two or three of three members lost at once: replacing them one by one cannot keep quorum."""
    for i in range(1, lost + 1):
        set_spec(workdir, f"{{name: etcd0{i}, ", f"{{name: etcd0{i}, replace: true, ")
    err = assert_refused(workdir, f"nodes.{lost - 1}.replace")
    assert f"replacing {lost} of 3 members at once would lose quorum" in err and "etcd.restore" in err


def test_replace_of_a_node_never_built_is_refused(workdir: Path) -> None:
    set_spec(workdir, "{name: etcd03, ", "{name: etcd03, replace: true, ")
    err = assert_refused(workdir, "nodes.2.replace")
    assert "not in the earlier build" in err and "join: true" in err


def test_replace_rekeys_once_and_the_marker_is_consumed(workdir: Path) -> None:
    assert build(workdir)[0] == 0
    old = (workdir / "out/demo/pki/etcd03.key").read_bytes()
    others = {n: (workdir / f"out/demo/pki/{n}.key").read_bytes() for n in ("etcd01", "etcd02", "admin", "ca")}
    set_spec(workdir, "{name: etcd03, ", "{name: etcd03, replace: true, ")
    code, out, err = build(workdir)
    assert code == 0, err
    assert "pki: etcd03: new key (replace)" in out and "etcd03 is replaced with a new key" in out
    new = (workdir / "out/demo/pki/etcd03.key").read_bytes()
    assert new != old
    assert {n: (workdir / f"out/demo/pki/{n}.key").read_bytes() for n in others} == others
    assert json.loads(_written(workdir, "etcd03")["/var/lib/etcd-seed/seed/member.json"])["mode"] == "replace"
    assert _options(workdir, "etcd03")["ETCD_INITIAL_CLUSTER_STATE"] == "existing"
    manifest = json.loads((workdir / "out/demo/manifest.json").read_text())
    assert manifest["replaced"] == {"etcd03": manifest["files"]["pki/etcd03.key"]["public_key_sha256"]}
    # The next build keeps the replacement's key and tells the operator to drop the marker.
    code, out, err = build(workdir)
    assert code == 0 and "(nothing changed)" in out
    assert "warning: nodes.2.replace: etcd03 was replaced by an earlier build" in err
    assert (workdir / "out/demo/pki/etcd03.key").read_bytes() == new
    # With the marker gone, the node is a plain member again; marked once more, it is replaced again.
    set_spec(workdir, "{name: etcd03, replace: true, ", "{name: etcd03, ")
    assert build(workdir)[0] == 0
    assert "replaced" not in json.loads((workdir / "out/demo/manifest.json").read_text())
    set_spec(workdir, "{name: etcd03, ", "{name: etcd03, replace: true, ")
    code, out, _ = build(workdir)
    assert code == 0 and "pki: etcd03: new key (replace)" in out


def test_scaling_in_prints_the_member_remove_command(workdir: Path) -> None:
    assert build(workdir)[0] == 0
    set_spec(workdir, '  - {name: etcd03, ip: 192.168.0.3, mac: "52:54:00:00:00:03"}\n', "")
    code, out, _ = build(workdir)
    assert code == 0
    assert ("etcd03 left the spec: take it out of the cluster before you power it off; from pki/, run: set -a && "
            ". ./etcdctl.env && set +a && etcdctl member remove \"$(etcdctl member list | awk -F', ' "
            "'$3 == \"etcd03\" {print $1}')\"") in out


def test_joined_nodes_are_rolled_later_and_new_ones_never(workdir: Path) -> None:
    """A node joining now boots afresh and is not in the rolling order; once built, a joined node (join: true still
    set) is a member like any other, and a renewal rolls it with the rest."""
    assert build(workdir)[0] == 0
    set_spec(workdir, '  - {name: etcd03, ip: 192.168.0.3, mac: "52:54:00:00:00:03"}',
             '  - {name: etcd03, ip: 192.168.0.3, mac: "52:54:00:00:00:03"}\n'
             '  - {name: etcd04, ip: 192.168.0.4, mac: "52:54:00:00:00:04", join: true}')
    code, out, err = run("build", "--spec", str(workdir / "cluster.yaml"), "--out", str(workdir / "out"), "--renew")
    assert code == 0, err
    order = next(line for line in out.splitlines() if line.startswith("roll the changed seeds"))
    assert "etcd04" not in order and "1. etcd01; 2. etcd02; 3. etcd03" in order
    code, out, err = run("build", "--spec", str(workdir / "cluster.yaml"), "--out", str(workdir / "out"), "--renew")
    assert code == 0, err
    order = next(line for line in out.splitlines() if line.startswith("roll the changed seeds"))
    assert "1. etcd01; 2. etcd02; 3. etcd03; 4. etcd04" in order
    assert "ETCDCTL_ENDPOINTS=https://<its IP>:2379 etcdctl endpoint health" in order


def test_changed_address_says_what_etcd_needs(workdir: Path) -> None:
    """etcd keeps a member's peer URL in its membership: a node whose address changed gets a note with the
    member update command (a joined one also refuses, on the node, to add itself twice)."""
    assert build(workdir)[0] == 0
    set_spec(workdir, "ip: 192.168.0.3,", "ip: 192.168.0.7,")
    code, out, err = build(workdir)
    assert code == 0, err
    assert ("etcd03's address changed from 192.168.0.3 to 192.168.0.7: etcd keeps a member's peer URL in the "
            "cluster's membership") in out
    assert "etcdctl member update \"$(etcdctl member list | awk -F', ' '$3 == \"etcd03\" {print $1}')\" " \
           "--peer-urls=https://192.168.0.7:2380" in out


def test_removed_client_is_revoked_and_its_files_named(workdir: Path) -> None:
    """A consumer taken out of clients: gets its certificate on the CRL, with a note that says so and that every
    node must be re-seeded, and a note naming the files to delete."""
    set_spec(workdir, "etcd:\n", "clients:\n  - {name: flannel, use: flannel}\netcd:\n")
    assert build(workdir)[0] == 0
    serial = json.loads((workdir / "out/demo/manifest.json").read_text())["certificates"]["pki/flannel.crt"]["serial"]
    set_spec(workdir, "clients:\n  - {name: flannel, use: flannel}\n", "")
    code, out, err = build(workdir)
    assert code == 0, err
    note = next(line for line in out.splitlines() if line.startswith("client flannel is no longer in use"))
    assert "delete clients/flannel.flanneld.env, pki/flannel.key and pki/flannel.crt" in note
    revoked = next(line for line in out.splitlines() if line.startswith("flannel: its certificate"))
    assert f"(serial {serial}, valid until 20" in revoked and "is revoked (left the spec)" in revoked
    assert "re-seed every node" in revoked


def test_removed_client_with_two_files_gets_one_note(workdir: Path) -> None:
    """A Prometheus client has two files: its removal is one note that names both."""
    set_spec(workdir, "etcd:\n", "clients:\n  - {name: metrics, use: prometheus}\netcd:\n")
    assert build(workdir)[0] == 0
    set_spec(workdir, "clients:\n  - {name: metrics, use: prometheus}\n", "")
    code, out, err = build(workdir)
    assert code == 0, err
    notes = [line for line in out.splitlines() if line.startswith("client metrics is no longer in use")]
    assert len(notes) == 1, out
    assert "delete clients/metrics.etcd-rules.yml, clients/metrics.prometheus.yml, pki/metrics.key and " \
           "pki/metrics.crt" in notes[0]


# --- backups, compaction, quota --------------------------------------------------------------


def test_backups_are_on_by_default(workdir: Path) -> None:
    assert build(workdir)[0] == 0
    written = _written(workdir, "etcd02")
    timer = written["/var/lib/etcd-seed/seed/etcd-backup.timer"]
    assert "OnCalendar=daily\n" in timer and "Persistent=true" in timer
    service = written["/var/lib/etcd-seed/seed/etcd-backup.service"]
    assert "User=etcd\n" in service and "Type=oneshot\n" in service
    script = written["/var/lib/etcd-seed/seed/etcd-seed-backup"]
    assert "keep=7\n" in script and 'dir="$root"/var/backups/etcd\n' in script
    assert "--endpoints=https://192.168.0.2:2379" in script
    assert "etcd-backup.timer" in written["/usr/local/sbin/etcd-seed-install"]


def test_backups_can_be_turned_off(workdir: Path) -> None:
    (workdir / "cluster.yaml").write_text(spec_yaml() + "backup: {enabled: false}\n")
    assert build(workdir)[0] == 0
    written = _written(workdir, "etcd01")
    assert "/var/lib/etcd-seed/seed/etcd-seed-backup" not in written
    assert "systemctl disable --now etcd-backup.timer" in written["/usr/local/sbin/etcd-seed-install"]


def test_defrag_is_on_by_default_and_staggered(workdir: Path) -> None:
    """Each member's timer has its own minute, 10 apart from 03:30, which systemd reads as the same day's times."""
    assert build(workdir)[0] == 0
    calendars = []
    for name in ("etcd01", "etcd02", "etcd03"):
        written = _written(workdir, name)
        timer = written["/var/lib/etcd-seed/seed/etcd-defrag.timer"]
        calendars.append(next(line[11:] for line in timer.splitlines() if line.startswith("OnCalendar=")))
        assert "Persistent=" not in timer.replace("No Persistent=", "")
        service = written["/var/lib/etcd-seed/seed/etcd-defrag.service"]
        assert "User=etcd\n" in service and "ExecStart=/usr/local/sbin/etcd-seed-member defrag\n" in service
        assert json.loads(written["/var/lib/etcd-seed/seed/member.json"])["defrag"] == {
            "min_free_percent": 50, "near_quota_percent": 80, "quota_bytes": 2 << 30}
        assert "etcd-defrag.timer" in _enabled(written)
    assert calendars == ["*-*-* 03:30:00", "*-*-* 03:40:00", "*-*-* 03:50:00"]
    if shutil.which("systemd-analyze"):
        done = subprocess.run(["systemd-analyze", "calendar", *calendars], capture_output=True, text=True, check=True)
        assert [line.split()[-1] for line in done.stdout.splitlines() if "Normalized form:" in line] == \
            ["03:30:00", "03:40:00", "03:50:00"]


def test_defrag_settings_and_off(workdir: Path) -> None:
    (workdir / "cluster.yaml").write_text(spec_yaml() + "defrag: {schedule: 'Sun 01:00', stagger_minutes: 30, "
                                          "min_free_percent: 25}\n")
    assert build(workdir)[0] == 0
    written = _written(workdir, "etcd03")
    assert "OnCalendar=Sun *-*-* 02:00:00\n" in written["/var/lib/etcd-seed/seed/etcd-defrag.timer"]
    assert json.loads(written["/var/lib/etcd-seed/seed/member.json"])["defrag"]["min_free_percent"] == 25
    (workdir / "cluster.yaml").write_text(spec_yaml() + "defrag: {enabled: false}\n")
    assert build(workdir)[0] == 0
    written = _written(workdir, "etcd01")
    assert "/var/lib/etcd-seed/seed/etcd-defrag.timer" not in written
    install = written["/usr/local/sbin/etcd-seed-install"]
    assert "systemctl disable --now etcd-defrag.timer" in install and "defragmentation off" in install


def _with_etcd(line: str) -> str:
    return spec_yaml().replace("  heartbeat_interval:", f"  {line}\n  heartbeat_interval:", 1)


def test_data_device_puts_etcd_on_its_own_disk(workdir: Path) -> None:
    (workdir / "cluster.yaml").write_text(_with_etcd("data_device: /dev/disk/by-id/virtio-etcd-data"))
    assert build(workdir)[0] == 0
    written = _written(workdir, "etcd01")
    install = written["/usr/local/sbin/etcd-seed-install"]
    assert "data_dev=/dev/disk/by-id/virtio-etcd-data\n" in install and "data_fs=ext4\n" in install
    assert subprocess.run(["sh", "-n", "-c", install], check=False).returncode == 0
    assert "RequiresMountsFor=/opt/etcd/data /opt/etcd/wal\n" in written["/var/lib/etcd-seed/seed/etcd.service"]
    assert (workdir / "out/demo/etcd01/etcd.service").read_text() == written["/var/lib/etcd-seed/seed/etcd.service"]
    # etcd's start step checks the disk's owner file: the cluster's default token and the member's name.
    token = "demo-" + hashlib.sha256(b"demo.example.com").hexdigest()[:12]
    assert json.loads(written["/var/lib/etcd-seed/seed/member.json"])["disk_owner"] == {
        "path": "/opt/etcd/.etcd-seed-member", "want": f"{token} etcd01"}


def test_a_cluster_without_a_data_disk_has_no_disk_steps(workdir: Path) -> None:
    assert build(workdir)[0] == 0
    written = _written(workdir, "etcd01")
    assert "data_dev=" not in written["/usr/local/sbin/etcd-seed-install"]
    assert "RequiresMountsFor" not in written["/var/lib/etcd-seed/seed/etcd.service"]
    assert "disk_owner" not in json.loads(written["/var/lib/etcd-seed/seed/member.json"])


def _refused_on_a_built_tree(workdir: Path, field: str) -> str:
    """The build exits 1 with one error line naming `field`, and the built tree is left as it was."""
    before = _files(workdir / "out")
    code, _, err = build(workdir)
    assert code == 1, err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {field}: "), err
    assert all(line.startswith(("error: ", "hint: ", "warning: ")) for line in err.splitlines()), err
    assert _files(workdir / "out") == before
    return err


def test_a_built_members_data_disk_does_not_change(workdir: Path) -> None:
    """A member's data stays on the disk it was built on: its install step refuses a seed that moves it (fstab, a
    blank disk formatted, an empty member at the next boot, before that step refused it), so the build refuses
    first, naming the node and what to do. A replaced node takes a new disk; a node may name its own."""
    spec = workdir / "cluster.yaml"
    spec.write_text(_with_etcd("data_device: /dev/vdb"))
    assert build(workdir)[0] == 0
    recorded = json.loads((workdir / "out/demo/manifest.json").read_text())["data_disks"]
    assert recorded == {f"etcd0{i}": {"device": "/dev/vdb", "fs": "ext4"} for i in (1, 2, 3)}
    spec.write_text(_with_etcd("data_device: /dev/vdc"))
    err = _refused_on_a_built_tree(workdir, "etcd.data_device")
    assert err == "error: etcd.data_device: the data of etcd01, etcd02, etcd03 is on /dev/vdb (ext4), and this " \
        "spec puts it on /dev/vdc (ext4); a member is never moved between disks (its install step refuses, so the " \
        "seed would never apply): keep /dev/vdb (ext4) (nodes[].data_device and .data_fs set one node's disk), or " \
        "rebuild each node on the new disk with replace: true, one node at a time\n", err
    spec.write_text(_with_etcd("data_device: /dev/vdb\n  data_fs: xfs"))
    assert "the data of etcd01, etcd02, etcd03 is on /dev/vdb (ext4), and this spec puts it on /dev/vdb (xfs)" in \
        _refused_on_a_built_tree(workdir, "etcd.data_fs")
    spec.write_text(spec_yaml())
    assert "the data of etcd01, etcd02, etcd03 is on /dev/vdb (ext4), and this spec puts it on its root disk" in \
        _refused_on_a_built_tree(workdir, "etcd.data_device")
    # etcd02 rebuilt on a disk of its own; the others keep theirs.
    moved = _with_etcd("data_device: /dev/vdb").replace('mac: "52:54:00:00:00:02"}',
                                                       'mac: "52:54:00:00:00:02", data_device: /dev/sdc}')
    spec.write_text(moved)
    assert "error: nodes.1.data_device: the data of etcd02 is on /dev/vdb (ext4), and this spec puts it on /dev/sdc " \
           "(ext4)" in _refused_on_a_built_tree(workdir, "nodes.1.data_device")
    spec.write_text(moved.replace("data_device: /dev/sdc}", "data_device: /dev/sdc, replace: true}"))
    code, _, err = build(workdir)
    assert code == 0, err
    assert "data_dev=/dev/sdc\n" in _written(workdir, "etcd02")["/usr/local/sbin/etcd-seed-install"]
    assert "data_dev=/dev/vdb\n" in _written(workdir, "etcd01")["/usr/local/sbin/etcd-seed-install"]
    recorded = json.loads((workdir / "out/demo/manifest.json").read_text())["data_disks"]
    assert recorded["etcd02"] == {"device": "/dev/sdc", "fs": "ext4"}
    assert build(workdir)[0] == 0  # replace: true left in the spec: the replacement is done, its disk kept


def test_a_tree_built_before_disks_were_recorded_records_them(workdir: Path) -> None:
    spec = workdir / "cluster.yaml"
    spec.write_text(_with_etcd("data_device: /dev/vdb"))
    assert build(workdir)[0] == 0
    manifest_path = workdir / "out/demo/manifest.json"
    document = json.loads(manifest_path.read_text())
    del document["data_disks"]
    manifest_path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    spec.write_text(_with_etcd("data_device: /dev/vdc"))  # not known to be a change: accepted, and recorded
    assert build(workdir)[0] == 0
    assert json.loads(manifest_path.read_text())["data_disks"]["etcd01"] == {"device": "/dev/vdc", "fs": "ext4"}


@pytest.mark.parametrize(("line", "field", "expected"), [
    ("data_device: /dev/vdb1", "etcd.data_device", "not a block device path"),
    ("data_device: dev/vdb", "etcd.data_device", "not a block device path"),
    ("data_device: /dev/disk/by-id/../../sda", "etcd.data_device", "not a block device path"),
    ("data_device: '/dev/disk/by-id/a b'", "etcd.data_device", "not a block device path"),
    ("data_device: '/dev/vdb\n/dev/sda / ext4'", "etcd.data_device", "not a block device path"),
    ("data_device: /dev/loop0", "etcd.data_device", "not a block device path"),
    ("data_device: 7", "etcd.data_device", "was read as the number 7"),
    ("data_fs: xfs", "etcd.data_fs", "is set without etcd.data_device"),
    ("data_fs: btrfs", "etcd.data_fs", "'btrfs' is not one of ext4, xfs"),
    ("node: data_device: /dev/vdb1", "nodes.1.data_device", "not a block device path"),
    ("node: data_device: '/dev/vdb\n/dev/sda / ext4'", "nodes.1.data_device", "not a block device path"),
    ("node: data_fs: xfs", "nodes.1.data_fs", "is set without a data disk (nodes[].data_device or etcd.data_device)"),
    ("node: data_fs: [xfs]", "nodes.1.data_fs", "['xfs'] is not one of ext4, xfs"),
], ids=lambda v: str(v)[:40])
def test_bad_data_device_is_refused(workdir: Path, line: str, field: str, expected: str) -> None:
    if line.startswith("node: "):
        key, value = line.removeprefix("node: ").split(": ", 1)
        spec = spec_yaml().replace('mac: "52:54:00:00:00:02"}', f'mac: "52:54:00:00:00:02", {key}: {value}}}')
        (workdir / "cluster.yaml").write_text(spec)
    else:
        (workdir / "cluster.yaml").write_text(_with_etcd(line))
    assert expected in assert_refused(workdir, field)


@pytest.mark.parametrize(("setting", "field", "expected"), [
    ("defrag: {schedule: daily}", "defrag.schedule", "is not [weekdays] HH:MM"),
    ("defrag: {schedule: '24:00'}", "defrag.schedule", "is not [weekdays] HH:MM"),
    ("defrag: {schedule: 3:30}", "defrag.schedule", "was read as the number 210; quote it"),
    ("defrag: {schedule: 'Sun 03:30\\n[Service]'}", "defrag.schedule", "is not [weekdays] HH:MM"),
    ("defrag: {schedule: '23:50'}", "defrag.schedule", "runs past midnight"),
    ("defrag: {stagger_minutes: 0}", "defrag.stagger_minutes", "between 1 and 240"),
    ("defrag: {min_free_percent: 100}", "defrag.min_free_percent", "between 1 and 99"),
    ("defrag: {min_free_percent: 0.5}", "defrag.min_free_percent", "must be a whole number"),
    ("defrag: {enabled: 'no'}", "defrag.enabled", "must be true or false"),
    ("defrag: {threshold: 50}", "defrag.threshold", "unknown key"),
    ("defrag: off", "defrag", "must be a mapping"),
], ids=lambda v: str(v)[:28])
def test_bad_defrag_setting_is_refused(workdir: Path, setting: str, field: str, expected: str) -> None:
    (workdir / "cluster.yaml").write_text(spec_yaml() + setting + "\n")
    assert expected in assert_refused(workdir, field)


@pytest.mark.parametrize(("setting", "field", "expected"), [
    ("backup: {schedule: dayly}", "backup.schedule", "not a calendar event"),
    ("backup: {schedule: '25:00'}", "backup.schedule", "not a calendar event"),
    ("backup: {schedule: 'daily\\n[Service]'}", "backup.schedule", "not a calendar event"),
    ("backup: {dir: relative/dir}", "backup.dir", "not an absolute path"),
    ("backup: {dir: /var/backups/../../etc}", "backup.dir", "not an absolute path"),
    ("backup: {dir: /etc/etcd-backups}", "backup.dir", "system directory"),
    ("backup: {dir: /srv}", "backup.dir", "system directory"),
    ("backup: {dir: /opt/etcd/backups}", "backup.dir", "overlaps /opt/etcd"),
    ("backup: {dir: /tmp/etcd}", "backup.dir", "system directory"),
    ("backup: {dir: /var/tmp/etcd}", "backup.dir", "which every user can write"),
    ("backup: {dir: /var/lock/etcd}", "backup.dir", "which every user can write"),
    ("backup: {dir: /root/backups}", "backup.dir", "which the etcd user cannot write"),
    ("backup: {dir: /home/ops/etcd}", "backup.dir", "where the etcd user cannot write"),
    ("backup: {dir: /var/log/etcd}", "backup.dir", "which the etcd user cannot write"),
    ("backup: {keep: 0}", "backup.keep", "between 1 and 1000"),
    ("backup: {enabled: 'yes'}", "backup.enabled", "must be true or false"),
], ids=lambda v: str(v)[:28])
def test_bad_backup_setting_is_refused(workdir: Path, setting: str, field: str, expected: str) -> None:
    (workdir / "cluster.yaml").write_text(spec_yaml() + setting + "\n")
    assert expected in assert_refused(workdir, field)


def test_compaction_and_quota_reach_options_env(workdir: Path) -> None:
    assert build(workdir)[0] == 0
    options = _options(workdir, "etcd01")
    assert (options["ETCD_AUTO_COMPACTION_MODE"], options["ETCD_AUTO_COMPACTION_RETENTION"],
            options["ETCD_QUOTA_BACKEND_BYTES"]) == ("periodic", "1h", str(2 << 30))
    assert set(options) <= Version(3, 5, 0).known_variables


@pytest.mark.parametrize(("setting", "field"), [
    ("auto_compaction_mode: sometimes", "etcd.auto_compaction_mode"),
    ("auto_compaction_retention: 1d", "etcd.auto_compaction_retention"),
    ("{auto_compaction_mode: revision, auto_compaction_retention: 1h}", "etcd.auto_compaction_retention"),
    ("quota_backend_bytes: 0", "etcd.quota_backend_bytes"),
    ("quota_backend_bytes: 1e12", "etcd.quota_backend_bytes"),
])
def test_bad_compaction_or_quota_is_refused(workdir: Path, setting: str, field: str) -> None:
    lines = yaml.safe_load(setting) if setting.startswith("{") else None
    text = "".join(f"  {k}: {v}\n" for k, v in lines.items()) if lines else f"  {setting}\n"
    set_spec(workdir, "etcd:\n", "etcd:\n" + text)
    assert_refused(workdir, field)


def test_quota_above_8_gib_is_a_warning(workdir: Path) -> None:
    set_spec(workdir, "etcd:\n", "etcd:\n  quota_backend_bytes: 12884901888\n")
    code, _, err = build(workdir)
    assert code == 0 and "warning: etcd.quota_backend_bytes: 12884901888 is above 8 GiB" in err


def _with_ntp(ntp: str) -> str:
    return spec_yaml(ntp=ntp)


@pytest.mark.parametrize(("ntp", "field", "expected"), [
    ("{}", "network.ntp", "needs at least one of servers or pools"),
    ("{servers: []}", "network.ntp", "needs at least one of servers or pools"),
    ("{servers: [10.0.0.300]}", "network.ntp.servers.0", "'10.0.0.300' is not an IPv4 address or a DNS name"),
    ("{servers: ['ntp example.com']}", "network.ntp.servers.0", "is not an IPv4 address or a DNS name"),
    ("{servers: ['ntp.example.com\\nruncmd: [reboot]']}", "network.ntp.servers.0", "not an IPv4 address"),
    ("{servers: ['-ntp.example.com']}", "network.ntp.servers.0", "not an IPv4 address"),
    ("{servers: ['[::1]']}", "network.ntp.servers.0", "not an IPv4 address"),
    ("{pools: [7]}", "network.ntp.pools.0", "7 is not an IPv4 address or a DNS name"),
    ("{servers: [a.example.com], pools: [a.example.com]}", "network.ntp.pools.0", "is listed twice"),
    ("{servers: a.example.com}", "network.ntp.servers", "must be a list"),
    ("{servers: [a.example.com], wait_seconds: 0}", "network.ntp.wait_seconds", "between 1 and 900"),
    ("{servers: [a.example.com], wait_seconds: 60s}", "network.ntp.wait_seconds", "must be a whole number"),
    ("{servers: [a.example.com], prefer: a.example.com}", "network.ntp.prefer", "unknown key"),
    ("on", "network.ntp", "must be a mapping"),
], ids=lambda v: str(v)[:32])
def test_bad_ntp_setting_is_refused(workdir: Path, ntp: str, field: str, expected: str) -> None:
    (workdir / "cluster.yaml").write_text(_with_ntp(ntp))
    assert expected in assert_refused(workdir, field)


def test_ntp_servers_reach_cloud_init_and_the_wait_reaches_the_node(workdir: Path) -> None:
    (workdir / "cluster.yaml").write_text(_with_ntp("{servers: [10.0.0.1, ntp.example.com.], pools: [pool.example], "
                                                    "wait_seconds: 300}"))
    assert build(workdir)[0] == 0
    user_data = yaml.safe_load((workdir / "out/demo/etcd02/user-data").read_text())
    assert user_data["ntp"]["servers"] == ["10.0.0.1", "ntp.example.com."]
    assert user_data["ntp"]["pools"] == ["pool.example"]
    written = _written(workdir, "etcd02")
    assert json.loads(written["/var/lib/etcd-seed/seed/member.json"])["clock_wait_s"] == 300
    assert "\nTimeoutStartSec=330s\n" in written["/var/lib/etcd-seed/seed/etcd-seed-clock.service"]
