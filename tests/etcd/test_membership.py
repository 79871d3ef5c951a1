"""Membership and recovery from seeds alone, with real etcd processes in network namespaces.

Members join as learners and promote themselves (two at once), a lost member is replaced
with a new key, the backup unit takes checked snapshots, and a cluster is restored from a
snapshot with and without a revision bump. No etcdctl is run by hand for any of it: the
generated scripts do the work, started through tests/helpers/systemctl_shim.py (PID 1 here is not
systemd). The restore tests need etcdutl --bump-revision, which etcd has since 3.5.10, so
they run the example's 3.5.16 bundle; the rest run upstream's 3.5.1.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from generator import _cli
from generator.iso import read_iso
from tests.helpers import node_package
from tests.helpers.converge import BASE, NEEDS, UPSTREAM, Lab, converged_lab, killer
from tests.helpers.etcd_checks import all_voting, assert_all_healthy
from tests.helpers.specs import TRIXIE

pytestmark = NEEDS

SNAPSHOT_NAME = re.compile(r"etcd0[0-9]-[0-9]{8}T[0-9]{6}Z-rev([0-9]+)-c([0-9]+)\.db")


def _members(lab: Lab, endpoints: list[str] | None = None) -> list[dict[str, object]]:
    done = lab.etcdctl("member", "list", "-w", "json", endpoints=endpoints)
    assert done.returncode == 0, done.stderr
    members: list[dict[str, object]] = json.loads(done.stdout)["members"]
    return members


def _add_nodes(lab: Lab, *lines: str) -> None:
    """Append node entries (YAML flow mappings) after etcd03 in the lab's spec."""
    text = lab.spec.read_text()
    anchor = next(line for line in text.splitlines() if "name: etcd03" in line)
    lab.spec.write_text(text.replace(anchor, "\n".join([anchor, *(f"  - {line}" for line in lines)])))


def _mark(lab: Lab, name: str, flag: str) -> None:
    lab.spec.write_text(lab.spec.read_text().replace(f"{{name: {name}, ", f"{{name: {name}, {flag}: true, "))


def _wait(what: str, check: object, lab: Lab, timeout: float = 120) -> float:
    start = time.monotonic()
    while not check():  # type: ignore[operator]
        if time.monotonic() - start > timeout:
            pytest.fail(f"timed out waiting for {what}\n{lab.logs()}")
        time.sleep(0.5)
    return time.monotonic() - start


def _unit_log(lab: Lab, name: str) -> str:
    logs = [lab.root(name) / "run/shim/etcd.log", lab.root(name) / "run/shim/etcd-seed-promote.service.log"]
    return "".join(p.read_text(errors="replace") for p in logs if p.exists())


def _public_key_sha(pem: bytes) -> str:
    cert = x509.load_pem_x509_certificates(pem)[0]
    return hashlib.sha256(cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).hexdigest()


def _build(lab: Lab, *extra: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = _cli.main(["build", "--spec", str(lab.spec), "--out", str(lab.work / "out"), *extra], out, err)
    assert code == 0, err.getvalue()
    return out.getvalue(), err.getvalue()


def test_two_members_join_at_once_as_learners(tmp_path: Path) -> None:
    """Two nodes marked join boot at the same moment: each adds itself as a learner (etcd allows one at a
    time, so one waits and retries), catches up, promotes itself, and serves the data; no founder's seed changes."""
    with converged_lab(tmp_path / "lab", UPSTREAM, "3.5.1", "jn", hosts=5) as lab:
        for i in range(20):
            assert lab.etcdctl("put", f"before/{i}", str(i)).returncode == 0
        founders = {n: (lab.out / n / "user-data").read_bytes() for n in ("etcd01", "etcd02", "etcd03")}
        _add_nodes(lab, f'{{name: etcd04, ip: {BASE}.4, mac: "52:54:00:00:00:04", join: true}}',
                   f'{{name: etcd05, ip: {BASE}.5, mac: "52:54:00:00:00:05", join: true}}')
        out, _ = _build(lab)
        assert "etcd04 joins the running cluster by itself" in out and "--learner" in out
        # With auth on, only etcd01's seed changes: it adds the new members' etcd users.
        changed = {n for n in founders if (lab.out / n / "user-data").read_bytes() != founders[n]}
        assert changed == {"etcd01"}, changed
        for name in ("etcd04", "etcd05"):
            lab.stage(name)
        lines: dict[str, str] = {}
        threads = [threading.Thread(target=lambda n=n: lines.__setitem__(n, lab.converge(n)))
                   for n in ("etcd04", "etcd05")]
        began = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert all(lines[n].endswith("; started etcd") for n in ("etcd04", "etcd05")), lines
        # They wait for their users, and say who makes them; then etcd01 runs its new seed.
        _wait("the joiners to wait for their etcd users", lambda: all(
            "waiting: the cluster has no etcd user" in _unit_log(lab, n) for n in ("etcd04", "etcd05")), lab, 60)
        assert "re-seed etcd01 (it adds the users of its seed)" in _unit_log(lab, "etcd04")
        lab.stage("etcd01")
        lab.converge("etcd01")
        everyone = [f"{BASE}.{i}" for i in range(1, 6)]
        took = _wait("five voting members", lambda: all_voting(lab.etcdctl, everyone, 5), lab, timeout=240)
        print(f"\nbench: two simultaneous joins to both promoted: {took:.1f} s (since {time.monotonic() - began:.1f} s "
              "ago: converge started)")
        for name in ("etcd04", "etcd05"):
            log = _unit_log(lab, name)
            assert f"etcd-seed: added {name} as a learner" in log, log
            assert f"etcd-seed: promoted {name} (member " in log, log
            got = lab.etcdctl("get", "--consistency=s", "--print-value-only", "before/7",
                              endpoints=[f"{BASE}.{name[-1]}"])
            assert got.stdout.strip() == "7"
        waited = [n for n in ("etcd04", "etcd05") if "another learner is still catching up" in _unit_log(lab, n)]
        print(f"bench: members that waited for the other learner: {waited or 'none (the first was promoted first)'}")
        # A learner cannot write its seed record; once promoted it does, and status has nothing left to roll.
        lab.wait_reported("etcd01", "etcd04", "etcd05", timeout=120)
        status = lab.status()
        assert status.returncode == 0 and "next: nothing to roll" in status.stdout, status.stdout
        assert [line.endswith(" in step") for line in status.stdout.splitlines()[1:6]] == [True] * 5, status.stdout

        # A joined member whose disk is lost cannot rejoin with its join seed: it says what to do instead,
        # and leaves its data dir empty. (The pause after a refusal is cut to 1 s here; it is 60 s on a node.)
        lab.wipe("etcd05")
        lab.stage("etcd05")
        lab.edit_staged("etcd05", "member.json", '"refused_pause_s": 60', '"refused_pause_s": 1')
        lab.converge("etcd05")
        _wait("the refusal", lambda: "ERROR: etcd05 is already a started member" in _unit_log(lab, "etcd05"), lab, 60)
        assert "mark it replace: true" in _unit_log(lab, "etcd05")
        assert not (lab.root("etcd05") / "opt/etcd/data/member").exists()
        assert not (lab.root("etcd05") / "opt/etcd/membership.env").exists()

        # Scaling in: etcd05 leaves the spec, and the command the build prints takes it out of the cluster.
        lab.wipe("etcd05")
        lab.spec.write_text("".join(line for line in lab.spec.read_text().splitlines(keepends=True)
                                    if "name: etcd05" not in line))
        out, _ = _build(lab)
        note = next(line for line in out.splitlines() if line.startswith("etcd05 left the spec"))
        command = note.split("from pki/, run: ", 1)[1].split(" ; then delete", 1)[0]
        assert "member remove" in command and '"etcd05"' in command
        etcdctl_dir = lab.root("etcd01") / "usr/local/bin"
        done = subprocess.run(lab.net.command(lab.net.hub, ["sh", "-c", command]), cwd=lab.out / "pki",
                              env={"PATH": f"{etcdctl_dir}:/usr/bin:/bin"}, capture_output=True, text=True,
                              timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        assert sorted(str(m["name"]) for m in _members(lab, everyone[:4])) == ["etcd01", "etcd02", "etcd03", "etcd04"]
        listed = note.split(" ; then delete ", 1)[1].removesuffix(" from the output").replace(" and ", ", ")
        for rel in listed.split(", "):  # its files go, as the note says
            shutil.rmtree(lab.out / rel) if rel.endswith("/") else (lab.out / rel).unlink()
        assert not list(lab.out.glob("**/etcd05*"))

        # etcd04's address given to a new node while etcd04 is still a member (no member remove was run):
        # the newcomer refuses, names the member that holds the peer URL, and writes nothing.
        spec_text = lab.spec.read_text()
        etcd04 = next(line for line in spec_text.splitlines() if "name: etcd04" in line)
        lab.spec.write_text(spec_text.replace(etcd04, f'  - {{name: etcd06, ip: {BASE}.4, mac: "52:54:00:00:00:06", '
                                                      'join: true}'))
        _build(lab)
        lab.namespaces["etcd06"] = lab.namespaces["etcd04"]  # the same address: etcd06 only runs etcdctl
        lab.stage("etcd06")
        lab.edit_staged("etcd06", "member.json", '"refused_pause_s": 60', '"refused_pause_s": 1')
        lab.converge("etcd06")
        _wait("the refusal", lambda: f"ERROR: peer URL https://{BASE}.4:2380 is taken by member etcd04"
              in _unit_log(lab, "etcd06"), lab, 60)
        assert not (lab.root("etcd06") / "opt/etcd/data/member").exists()
        assert "etcd06" not in {str(m["name"]) for m in _members(lab, everyone[:4])}
        lab.wipe("etcd06")
        lab.spec.write_text(spec_text.replace(etcd04 + "\n", ""))  # etcd04 stays a member, out of the spec

        # No quorum: three of the four members are down. A node joining now retries, gives up with a message
        # at its deadline (cut to 6 s here; 15 minutes on a node) and leaves its data dir empty.
        for name in ("etcd02", "etcd03", "etcd04"):
            lab.wipe(name)
        _add_nodes(lab, f'{{name: etcd05, ip: {BASE}.5, mac: "52:54:00:00:00:05", join: true}}')
        _build(lab)
        lab.stage("etcd05")
        lab.edit_staged("etcd05", "member.json", '"timeout_s": 900', '"timeout_s": 6')
        lab.converge("etcd05")
        _wait("the join to give up", lambda: "gave up after 6s" in _unit_log(lab, "etcd05"), lab, 120)
        log = _unit_log(lab, "etcd05")
        assert "etcd-seed: ERROR: " in log and "gave up after 6s: nothing written to the data dir" in log, log
        assert not (lab.root("etcd05") / "opt/etcd/data/member").exists()
        assert not (lab.root("etcd05") / "opt/etcd/membership.env").exists()


def test_lost_member_is_replaced_with_a_new_key(tmp_path: Path) -> None:
    """etcd03's machine is gone. Marked replace, it gets a new key; booted on an empty disk it removes its
    stale entry, joins as a learner, promotes itself and holds every key; the others keep their IDs."""
    with converged_lab(tmp_path / "lab", UPSTREAM, "3.5.1", "rp") as lab:
        for i in range(30):
            assert lab.etcdctl("put", f"kept/{i:02d}", str(i)).returncode == 0
        before = {m["name"]: m["ID"] for m in _members(lab)}
        old_key = _public_key_sha((lab.out / "pki/etcd03.crt").read_bytes())
        lab.wipe("etcd03")
        survivors = [f"{BASE}.1", f"{BASE}.2"]
        _wait("a write through the survivors", lambda: lab.etcdctl(
            "put", "during", "x", endpoints=survivors).returncode == 0, lab)

        _mark(lab, "etcd03", "replace")
        out, _ = _build(lab)
        assert "etcd03 is replaced with a new key" in out, out
        assert "pki: etcd03: new key (replace)" in out, out
        new_key = _public_key_sha((lab.out / "pki/etcd03.crt").read_bytes())
        assert new_key != old_key
        lab.stage("etcd03")
        _promote_before_etcd_runs(lab, "etcd03")
        began = time.monotonic()
        assert lab.converge("etcd03").endswith("; started etcd")
        everyone = [f"{BASE}.{i}" for i in (1, 2, 3)]
        _wait("three voting members", lambda: all_voting(lab.etcdctl, everyone, 3), lab, timeout=180)
        print(f"\nbench: empty-disk replacement to promoted member: {time.monotonic() - began:.1f} s")
        after = {m["name"]: m["ID"] for m in _members(lab)}
        assert after["etcd01"] == before["etcd01"] and after["etcd02"] == before["etcd02"]
        assert after["etcd03"] != before["etcd03"]
        log = _unit_log(lab, "etcd03")
        assert f"etcd-seed: removed the stale member entry {before['etcd03']:x} of etcd03" in log, log
        assert _public_key_sha(_served_pem(lab, f"{BASE}.3")) == new_key
        for i in range(30):
            got = lab.etcdctl("get", "--consistency=s", "--print-value-only", f"kept/{i:02d}", endpoints=[f"{BASE}.3"])
            assert got.stdout.strip() == str(i)

        # The marker is consumed: building again keeps the new key and says to remove replace: true.
        out, err = _build(lab)
        assert "etcd03 was replaced by an earlier build" in err
        assert "new key" not in out
        assert _public_key_sha((lab.out / "pki/etcd03.crt").read_bytes()) == new_key


def _promote_before_etcd_runs(lab: Lab, name: str) -> None:
    """The promote step, run before the replaced node's etcd has started, must not take the stale entry of its
    lost incarnation (same name and peer URL, and voting) for itself; it waits for its own etcd instead."""
    root, staged = lab.root(name), lab.root(name) / "var/lib/etcd-seed/seed"
    config = json.loads((staged / "member.json").read_text())
    config["timeout_s"] = 3
    installed = {config["ca"]: staged / "ca.crt", config["cert"]: staged / "etcd.crt",
                 config["key"]: staged / "etcd.key", config["etcdctl"]: lab.root("etcd01") / "usr/local/bin/etcdctl"}
    for path, source in installed.items():
        (root / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, root / path.lstrip("/"))
    (root / "etc/etcd").mkdir(parents=True, exist_ok=True)
    (root / "etc/etcd/member.json").write_text(json.dumps(config))
    node_package.install(root, staged)
    done = node_package.run(root, "promote", launcher=staged / "etcd-seed-member", timeout_s=60,
                            command=lab.net.command(lab.namespaces[name], []))
    assert done.returncode == 1 and f"{name} is a voting member" not in done.stderr, done.stderr
    assert f"etcd on {name} does not answer yet" in done.stderr and "gave up after 3s" in done.stderr, done.stderr


def _served_pem(lab: Lab, ip: str) -> bytes:
    argv = ["openssl", "s_client", "-connect", f"{ip}:2379", "-CAfile", str(lab.out / "pki/ca.crt"),
            "-cert", str(lab.out / "pki/admin.crt"), "-key", str(lab.out / "pki/admin.key")]
    done = subprocess.run(lab.net.command(lab.net.hub, argv), input="", capture_output=True, text=True,
                          timeout=30, check=False)
    begin, end = "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"
    return done.stdout[done.stdout.index(begin):done.stdout.index(end) + len(end)].encode()


@pytest.fixture(scope="module")
def trixie_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    if not TRIXIE.exists():
        pytest.skip(f"make test builds vendor/{TRIXIE.name} with apt-get download")
    work = tmp_path_factory.mktemp("membership") / "lab"
    with converged_lab(work, TRIXIE, "3.5.16", "rs", extra="backup: {keep: 2}\n") as lab:
        yield lab


def _status(lab: Lab) -> list[dict[str, object]]:
    done = lab.etcdctl("endpoint", "status", "-w", "json")
    assert done.returncode == 0, done.stderr
    return [s["Status"] for s in json.loads(done.stdout)]


def _snapshot_revision(lab: Lab, path: Path) -> int:
    done = subprocess.run([str(lab.root("etcd01") / "usr/local/bin/etcdutl"), "snapshot", "status", "-w", "json",
                           str(path)], capture_output=True, text=True, check=True)
    return int(json.loads(done.stdout)["revision"])


def _backup(lab: Lab, name: str) -> subprocess.CompletedProcess[str]:
    """`systemctl start etcd-backup.service` on the node, as an operator would run it."""
    return lab.systemctl(name, "start", "etcd-backup.service")


def test_backup_unit_keeps_the_newest_checked_snapshots(trixie_lab: Lab) -> None:
    """The generated backup unit writes <member>-<time>-rev<revision>-c<cluster ID>.db, 0600, checked by etcdutl,
    keeps the newest two (backup.keep) of its own member by revision, those of another cluster last, removes what a
    killed run left, and when etcd is down it fails and leaves no partial file."""
    lab = trixie_lab
    for i in range(10):
        assert lab.etcdctl("put", f"backup/{i}", str(i)).returncode == 0
    last = max(int(s["header"]["revision"]) for s in _status(lab))  # type: ignore[index]
    backups = lab.root("etcd01") / "var/backups/etcd"
    assert backups.stat().st_mode & 0o777 == 0o700
    for _ in range(3):
        done = _backup(lab, "etcd01")
        assert done.returncode == 0, done.stdout + done.stderr + lab.logs()
        time.sleep(1.1)  # names are to the second
    names = sorted(p.name for p in backups.iterdir())
    assert len(names) == 2 and all(SNAPSHOT_NAME.fullmatch(n) for n in names), names
    newest = backups / names[-1]
    assert newest.stat().st_mode & 0o777 == 0o600
    revision = int(SNAPSHOT_NAME.fullmatch(newest.name).group(1))  # type: ignore[union-attr]
    assert revision >= last and _snapshot_revision(lab, newest) == revision
    log = (lab.root("etcd01") / "run/shim/etcd-backup.service.log").read_text()
    assert f"etcd-seed: backup: /var/backups/etcd/{newest.name}" not in log  # paths are under the scratch root
    assert f"{backups}/{newest.name} (" in log and "keeping the newest 2" in log

    # One taken while the clock was far ahead (the timer fires at boot, before NTP): ranked by its revision, it is
    # pruned at the next run instead of staying "newest" for ever. Another member's backups, and files of other
    # names, in the same directory are not this member's to prune.
    cluster = SNAPSHOT_NAME.fullmatch(newest.name).group(2)  # type: ignore[union-attr]
    ahead, other, foreign = f"etcd01-29991231T235959Z-rev1-c{cluster}.db", "etcd02-20200101T000000Z-rev2.db", "notes.db"
    # From before a restore (another cluster ID, or a name without one): revisions higher than this cluster's.
    restored_over = ["etcd01-20200101T000000Z-rev999999997-c1.db", "etcd01-20200101T000000Z-rev999999996.db"]
    # What a run killed in snapshot save (SIGKILL, a power cut) leaves; a signal it can catch leaves nothing.
    leftovers = [".snapshot.etcd01.AbC123", ".snapshot.etcd01.AbC123.part", ".snapshot.etcd01.AbC123.err"]
    running = ".snapshot.etcd02.XyZ789.part"  # another member's, in a shared directory: not this run's to remove
    for name in (ahead, other, foreign, *restored_over, *leftovers, running):
        (backups / name).write_bytes(b"x")
    assert _backup(lab, "etcd01").returncode == 0
    kept = sorted(p.name for p in backups.iterdir())
    assert ahead not in kept and other in kept and foreign in kept and running in kept, kept
    assert not set(restored_over) & set(kept) and not set(leftovers) & set(kept), kept
    (backups / running).unlink()
    assert len([n for n in kept if n.startswith("etcd01-")]) == 2, kept
    # Two that claim higher revisions than the cluster has: the snapshot just taken is never pruned.
    for name in ("etcd01-20200101T000000Z-rev999999999.db", "etcd01-20200101T000001Z-rev999999998.db"):
        (backups / name).write_bytes(b"x")
    assert _backup(lab, "etcd01").returncode == 0
    log = (lab.root("etcd01") / "run/shim/etcd-backup.service.log").read_text().splitlines()[-1]
    just_taken = log.split(f"{backups}/", 1)[1].split(" (", 1)[0]
    assert (backups / just_taken).exists(), log
    for path in backups.iterdir():
        if not SNAPSHOT_NAME.fullmatch(path.name) or "rev99999999" in path.name:
            path.unlink()
    # A directory every user can write is refused: anyone could swap a snapshot before a restore.
    backups.chmod(0o777)
    refused = _backup(lab, "etcd01")
    backups.chmod(0o700)
    assert refused.returncode != 0
    assert "is writable by every user" in (lab.root("etcd01") / "run/shim/etcd-backup.service.log").read_text()

    subprocess.run(["kill", "-KILL", str(lab.pid("etcd02"))], check=True)  # etcd02 is down
    failed = _backup(lab, "etcd02")
    assert lab.systemctl("etcd02", "start", "etcd.service").returncode == 0
    assert failed.returncode != 0
    assert "ERROR: backup: the member does not answer: " in \
        (lab.root("etcd02") / "run/shim/etcd-backup.service.log").read_text()
    assert list((lab.root("etcd02") / "var/backups/etcd").iterdir()) == []
    lab.wait_healthy()


def _take_snapshot(lab: Lab, path: Path) -> int:
    """A snapshot taken from the hub with the admin certificate; returns its revision."""
    argv = [str(lab.root("etcd01") / "usr/local/bin/etcdctl"), f"--endpoints=https://{BASE}.1:2379",
            f"--cacert={lab.out / 'pki/ca.crt'}", f"--cert={lab.out / 'pki/admin.crt'}",
            f"--key={lab.out / 'pki/admin.key'}", "snapshot", "save", str(path)]
    done = subprocess.run(lab.net.command(lab.net.hub, argv), capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return _snapshot_revision(lab, path)


def _restore(lab: Lab, snapshot: Path, bump: int | None) -> tuple[float, dict[str, str]]:
    """Every member lost, then booted on an empty disk from restore seeds; returns seconds to healthy and lines."""
    for name in ("etcd01", "etcd02", "etcd03"):
        lab.wipe(name)
    text = re.sub(r"(?m)^  restore: .*\n", "", lab.spec.read_text())
    setting = "" if bump is None else f", bump_revision: {bump}"
    lab.spec.write_text(text.replace("etcd:\n", f"etcd:\n  restore: {{snapshot: {snapshot}{setting}}}\n"))
    out, _ = _build(lab)
    assert "restore: boot every member on an empty disk" in out
    began = time.monotonic()
    lines = {}
    for name in ("etcd01", "etcd02", "etcd03"):
        lab.stage(name)
        media = lab.work / "media" / name
        shutil.rmtree(media, ignore_errors=True)
        media.mkdir(parents=True)
        for file_name, data in read_iso((lab.out / name / "seed.iso").read_bytes()).items():
            (media / file_name).write_bytes(data)
        lines[name] = lab.converge(name, media=media)
    lab.wait_healthy()
    return time.monotonic() - began, lines


def test_restore_bumps_revisions_under_a_new_cluster_id(trixie_lab: Lab) -> None:
    """All three members lost; restore seeds carry a snapshot; each member restores once with
    --bump-revision (default 1,000,000,000) and a new token: every key is back, the revision is past
    the old one plus the bump, and the cluster ID is new. The same seed again restores nothing."""
    lab = trixie_lab
    for i in range(25):
        assert lab.etcdctl("put", f"restore/{i:02d}", str(i)).returncode == 0
    old_cluster = _status(lab)[0]["header"]["cluster_id"]  # type: ignore[index]
    snapshot = lab.work / "taken.db"
    revision = _take_snapshot(lab, snapshot)
    took, lines = _restore(lab, snapshot, None)
    print(f"\nbench: restore of three empty members to a healthy cluster: {took:.1f} s")
    assert all("restored snapshot " in line and "(revision +1000000000)" in line for line in lines.values()), lines
    for i in range(25):
        got = lab.etcdctl("get", "--print-value-only", f"restore/{i:02d}")
        assert got.stdout.strip() == str(i)
    status = _status(lab)
    assert all(s["header"]["cluster_id"] != old_cluster for s in status)  # type: ignore[index]
    assert min(int(s["header"]["revision"]) for s in status) >= revision + 1_000_000_000  # type: ignore[index]
    assert lab.etcdctl("put", "after-restore", "1").returncode == 0
    again = lab.converge("etcd02", media=lab.work / "media" / "etcd02")
    assert "restored" not in again and again.endswith("etcd left running"), again


def test_restore_without_a_bump_keeps_the_revision(trixie_lab: Lab) -> None:
    """bump_revision: 0 restores the snapshot's own revision (etcd's behaviour before 3.5.10). The backups taken
    before the restore, kept off the lost disk and put back, have higher revisions than the restored cluster's:
    the newest two taken after it are kept, and those go."""
    lab = trixie_lab
    assert lab.etcdctl("put", "plain", "1").returncode == 0
    snapshot = lab.work / "plain.db"
    revision = _take_snapshot(lab, snapshot)
    for i in range(20):
        assert lab.etcdctl("put", f"lost/{i}", str(i)).returncode == 0
    backups = lab.root("etcd01") / "var/backups/etcd"
    for path in backups.iterdir():
        path.unlink()
    for _ in range(2):
        assert _backup(lab, "etcd01").returncode == 0
        time.sleep(1.1)  # names are to the second
    kept_off = lab.work / "kept-off"
    shutil.copytree(backups, kept_off)
    _, lines = _restore(lab, snapshot, 0)
    assert all("restored snapshot " in line and "revision +" not in line for line in lines.values()), lines
    status = _status(lab)
    assert all(revision <= int(s["header"]["revision"]) < revision + 1000 for s in status)  # type: ignore[index]
    assert lab.etcdctl("get", "--print-value-only", "plain").stdout.strip() == "1"
    before = sorted(p.name for p in kept_off.iterdir())
    for name in before:
        shutil.copy2(kept_off / name, backups / name)
    taken = []
    for _ in range(3):
        assert _backup(lab, "etcd01").returncode == 0
        log = (lab.root("etcd01") / "run/shim/etcd-backup.service.log").read_text().splitlines()[-1]
        taken.append(log.split(f"{backups}/", 1)[1].split(" (", 1)[0])
        time.sleep(1.1)
    revisions = [int(re.findall(r"-rev([0-9]+)", n)[0]) for n in before + taken]
    assert min(revisions[:2]) > max(revisions[2:]), revisions  # the restored cluster is behind the lost one
    assert sorted(p.name for p in backups.iterdir()) == sorted(taken[1:]), (before, taken)


def _member_step(lab: Lab, ns: str, step: str, etcdctl: Path | None = None, config: dict[str, object] | None = None,
                 **settings_: object) -> subprocess.CompletedProcess[str]:
    """The member script, run by hand in namespace `ns` with etcd03's certificate (it carries clientAuth) and a
    member.json changed as the arguments say: a node that etcd's answers must not fool. Each run gets a scratch
    root of its own, as a node that lost power with an empty data dir comes back."""
    scratch = lab.work / "scratch"
    root = scratch / f"{step}-{len(list(scratch.glob('*'))) if scratch.exists() else 0}"
    staged = lab.root("etcd03") / "var/lib/etcd-seed/seed"
    settings = {**json.loads((staged / "member.json").read_text()), "timeout_s": 4, "refused_pause_s": 0,
                **settings_, **(config or {})}
    installed = {str(settings["ca"]): staged / "ca.crt", str(settings["cert"]): staged / "etcd.crt",
                 str(settings["key"]): staged / "etcd.key",
                 str(settings["etcdctl"]): etcdctl or lab.root("etcd01") / "usr/local/bin/etcdctl"}
    for path, source in installed.items():
        (root / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, root / path.lstrip("/"))
    (root / "etc/etcd").mkdir(parents=True, exist_ok=True)
    (root / "etc/etcd/member.json").write_text(json.dumps(settings))
    (root / "opt/etcd").mkdir(parents=True, exist_ok=True)
    node_package.install(root, staged)
    return node_package.run(root, step, launcher=staged / "etcd-seed-member", timeout_s=90,
                            command=lab.net.command(ns, []))


def test_member_script_acts_only_on_its_own_entries(tmp_path: Path) -> None:
    """What the member script removes, adds and writes is checked against etcd's real answers: a replacement never
    removes a started member of another name that holds its peer URL; a joined node whose address changed is not
    added twice under one name; a member with a peer URL of another shape stops the join before membership.env."""
    with converged_lab(tmp_path / "lab", UPSTREAM, "3.5.1", "ms", hosts=4) as lab:
        everyone = [f"{BASE}.{i}" for i in (1, 2, 3)]
        before = sorted((str(m["name"]), m["ID"]) for m in _members(lab))
        peers = [f"https://{ip}:2379" for ip in everyone]

        # etcd09 marked replace, given etcd03's address while etcd03 runs: refused, and etcd03 stays.
        done = _member_step(lab, lab.namespaces["etcd04"], "prepare", name="etcd09", mode="replace",
                            peer_url=f"https://{BASE}.3:2380", peers=peers)
        assert done.returncode == 1, done.stderr
        assert f"ERROR: peer URL https://{BASE}.3:2380 is taken by member etcd03" in done.stderr, done.stderr
        assert sorted((str(m["name"]), m["ID"]) for m in _members(lab)) == before
        assert_all_healthy(lab.etcdctl, 3)

        # etcd03 marked join at a new address while it is a started member at its old one: refused.
        done = _member_step(lab, lab.namespaces["etcd04"], "prepare", name="etcd03", mode="join",
                            peer_url=f"https://{BASE}.4:2380", peers=peers)
        assert done.returncode == 1, done.stderr
        assert "its address changed; mark it replace: true" in done.stderr, done.stderr
        assert sorted((str(m["name"]), m["ID"]) for m in _members(lab)) == before

        # A member whose peer URL is not https://<IPv4>:<port> (added by someone with the admin certificate):
        # a joining node refuses to build its membership from it, and writes no membership.env.
        # etcd refuses a new member until every member has been connected for a few seconds ("unhealthy cluster").
        tries: list[subprocess.CompletedProcess[str]] = []

        def add_odd() -> bool:
            tries.append(lab.etcdctl("member", "add", "odd", f"--peer-urls=http://{BASE}.9:2380", "--learner",
                                     "-w", "json"))
            return tries[-1].returncode == 0
        _wait("member add", add_odd, lab, 30)
        added = tries[-1]
        odd = json.loads(added.stdout)["member"]["ID"]
        try:
            done = _member_step(lab, lab.namespaces["etcd04"], "prepare", name="etcd04", mode="join",
                                peer_url=f"https://{BASE}.4:2380", peers=peers)
        finally:
            assert lab.etcdctl("member", "remove", f"{odd:x}").returncode == 0
        assert done.returncode == 1, done.stderr
        assert f"with peer URLs that are not https://<IPv4>:<port>: ['http://{BASE}.9:2380']" in done.stderr
        assert "Traceback" not in done.stderr
        assert not list((lab.work / "scratch").glob("*/opt/etcd/membership.env"))
        assert sorted((str(m["name"]), m["ID"]) for m in _members(lab)) == before

        # etcd04 loses power right after its `member add`, before membership.env: its next start reuses the
        # unstarted entry it added (no second member), and writes membership.env from it.
        killer = lab.work / "etcdctl-killed-after-add"
        real = lab.root("etcd01") / "usr/local/bin/etcdctl"
        killer.write_text(f'#!/bin/sh\n"{real}" "$@"\nstatus=$?\n'
                          'case " $* " in *" member add "*) kill -KILL $PPID ;; esac\nexit $status\n')
        killer.chmod(0o755)
        joining: dict[str, object] = {"name": "etcd04", "mode": "join", "peer_url": f"https://{BASE}.4:2380",
                                      "peers": peers}
        done = _member_step(lab, lab.namespaces["etcd04"], "prepare", killer, config=joining)
        assert done.returncode == -signal.SIGKILL, done.stderr
        unstarted = [m for m in _members(lab) if f"https://{BASE}.4:2380" in m["peerURLs"]]  # type: ignore[operator]
        assert len(unstarted) == 1 and not unstarted[0].get("name"), unstarted
        try:
            done = _member_step(lab, lab.namespaces["etcd04"], "prepare", config=joining)
            assert done.returncode == 0, done.stderr
            assert f"reusing the unstarted member entry {unstarted[0]['ID']:x} for etcd04" in done.stderr
            written = next((lab.work / "scratch").glob("*/opt/etcd/membership.env")).read_text()
            assert f"etcd04=https://{BASE}.4:2380" in written and "ETCD_INITIAL_CLUSTER_STATE=existing" in written
            assert len([m for m in _members(lab) if f"https://{BASE}.4:2380" in m["peerURLs"]]) == 1  # type: ignore[operator]
        finally:
            assert lab.etcdctl("member", "remove", f"{unstarted[0]['ID']:x}").returncode == 0


def _mount_tmpfs(path: Path) -> None:
    """A filesystem of its own at path, holding lost+found as a freshly made one does."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m,mode=0700", "tmpfs", str(path)], check=True)
    (path / "lost+found").mkdir()


def test_restore_onto_mounted_data_and_wal_dirs(trixie_lab: Lab) -> None:
    """The data and WAL dirs are mount points holding lost+found (a dedicated disk). A data dir with anything else
    in it is refused with an ERROR, and etcd does not start on it; once it is empty, every member restores into
    the mounted dirs and serves every key."""
    lab = trixie_lab
    for i in range(15):
        assert lab.etcdctl("put", f"mounted/{i:02d}", str(i)).returncode == 0
    snapshot = lab.work / "mounted.db"
    _take_snapshot(lab, snapshot)
    mounts: list[Path] = []
    try:
        for name in ("etcd01", "etcd02", "etcd03"):
            lab.wipe(name)
            for rel in ("opt/etcd/data", "opt/etcd/wal"):
                _mount_tmpfs(lab.root(name) / rel)
                mounts.append(lab.root(name) / rel)
        (lab.root("etcd01") / "opt/etcd/data/left-over").write_text("x")
        text = re.sub(r"(?m)^  restore: .*\n", "", lab.spec.read_text())
        lab.spec.write_text(text.replace("etcd:\n", f"etcd:\n  restore: {{snapshot: {snapshot}}}\n"))
        _build(lab)
        media: dict[str, Path] = {}
        for name in ("etcd01", "etcd02", "etcd03"):
            lab.stage(name)
            media[name] = lab.work / "media-mounted" / name
            shutil.rmtree(media[name], ignore_errors=True)
            media[name].mkdir(parents=True)
            for file_name, content in read_iso((lab.out / name / "seed.iso").read_bytes()).items():
                (media[name] / file_name).write_bytes(content)
        lab.edit_staged("etcd01", "member.json", '"refused_pause_s": 60', '"refused_pause_s": 1')

        refused = lab.install("etcd01", media["etcd01"])
        assert refused.returncode == 1
        assert "etcd-seed: ERROR: restore: the data dir " in refused.stderr and "left-over" in refused.stderr
        assert "etcd is not started until the restore has been done" in refused.stderr
        # systemd starts etcd.service at boot all the same: its ExecStartPre refuses an unrestored member.
        env = {"ETCD_SEED_ROOT": str(lab.root("etcd01")), "PATH": f"{lab.shim_dir}:/usr/bin:/bin"}
        subprocess.run(lab.net.command(lab.namespaces["etcd01"], ["systemctl", "start", "etcd.service"]), env=env,
                       check=True)
        _wait("the refusal", lambda: "holds no restored member: etcd would start an empty cluster"
              in _unit_log(lab, "etcd01"), lab, 30)
        time.sleep(2)
        assert not (lab.root("etcd01") / "opt/etcd/data/member").exists()
        assert subprocess.run(lab.net.command(lab.namespaces["etcd01"], ["systemctl", "is-active", "etcd.service"]),
                              env=env, check=False).returncode != 0

        (lab.root("etcd01") / "opt/etcd/data/left-over").unlink()
        _restore_killed_at_each_move(lab, media["etcd01"])
        lines = {name: lab.converge(name, media=media[name]) for name in ("etcd01", "etcd02", "etcd03")}
        assert all("restored snapshot " in line for line in lines.values()), lines
        lab.wait_healthy()
        for i in range(15):
            got = lab.etcdctl("get", "--print-value-only", f"mounted/{i:02d}")
            assert got.stdout.strip() == str(i)
        for name in ("etcd01", "etcd02", "etcd03"):
            data, wal = lab.root(name) / "opt/etcd/data", lab.root(name) / "opt/etcd/wal"
            assert os.path.ismount(data) and os.path.ismount(wal)
            assert (data / "member/snap/db").is_file() and list(wal.glob("*.wal")), name
            assert sorted(p.name for p in data.iterdir()) == ["lost+found", "member"]
        # A re-seed on the mounted dirs (renewed certificates): the member is kept, nothing is restored again.
        _build(lab, "--renew")
        lab.stage("etcd02")
        again = lab.converge("etcd02", media=media["etcd02"])
        assert "restored" not in again and "etcd.crt" in again and again.endswith("on the next handshake"), again
        lab.wait_healthy()
        assert lab.etcdctl("get", "--print-value-only", "mounted/07").stdout.strip() == "7"
    finally:
        _kill_all_members(lab)
        for path in reversed(mounts):
            subprocess.run(["umount", "-l", str(path)], check=False)


def _kill_all_members(lab: Lab) -> None:
    for pid_file in lab.work.glob("roots/*/run/shim/*.pid"):
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.killpg(int(pid_file.read_text()), signal.SIGKILL)


def _restore_killed_at_each_move(lab: Lab, media: Path) -> None:
    """etcd01's restore, killed (SIGKILL) before each of the moves that put the restored member in place: the next
    run starts it over and completes it, and no run leaves a member that is not whole. Leaves etcd01 unrestored."""
    root = lab.root("etcd01")
    data, wal, marker = root / "opt/etcd/data", root / "opt/etcd/wal", root / "var/lib/etcd-seed/restoring"
    tools = killer(lab.work)

    def reset() -> None:
        _kill_all_members(lab)
        for directory in (data, wal):
            for entry in directory.iterdir():
                if entry.name != "lost+found":
                    shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        marker.unlink(missing_ok=True)
        (tools / "count").unlink(missing_ok=True)

    def run(kill_at: int) -> subprocess.CompletedProcess[str]:
        return lab.install("etcd01", media, path=str(tools), extra_env={"KILL_AT": str(kill_at)})

    reset()
    counted = run(0)  # the files are in place already: only the restore's moves are left to count
    assert counted.returncode == 0 and "restored snapshot " in counted.stderr, counted.stderr
    # Less the last: the record of the applied seed, written by this first complete run only.
    moves = int((tools / "count").read_text()) - 1
    assert moves >= 2 and (root / "var/lib/etcd-seed/applied").exists(), moves
    for kill_at in range(1, moves + 1):
        reset()
        killed = run(kill_at)
        assert killed.returncode != 0 and "etcd-seed: applied" not in killed.stderr, (kill_at, killed.stderr)
        assert marker.exists(), kill_at  # the moves had begun: the next run must not take a part for a member
        line = lab.converge("etcd01", media=media)
        assert "restored snapshot " in line, (kill_at, line)
        assert (data / "member/snap/db").is_file() and list(wal.glob("*.wal")) and not marker.exists(), kill_at
    print(f"\nbench: a restore killed before each of its {moves} moves, and started over each time")
    reset()
