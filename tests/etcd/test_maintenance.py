"""Scheduled defragmentation on real etcd: the generated etcd-defrag.service (etcd-seed-member defrag) run on
members converged from their seeds, in network namespaces, as systemd would run it."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.helpers.converge import BASE, NEEDS, Lab, converged_lab
from tests.helpers.etcd_checks import Writer
from tests.helpers.specs import TRIXIE

pytestmark = NEEDS
QUOTA = 16 << 20  # small, so that a NOSPACE alarm takes seconds to raise
VALUE = base64.b64encode(os.urandom(600 << 10)).decode()  # 800 KiB that no page can share


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    if not TRIXIE.exists():
        pytest.skip(f"make test builds vendor/{TRIXIE.name} with apt-get download")
    work = tmp_path_factory.mktemp("maintenance") / "lab"
    with converged_lab(work, TRIXIE, "3.5.16", "df", etcd_extra=f"  quota_backend_bytes: {QUOTA}\n") as lab:
        yield lab


def _sizes(lab: Lab) -> dict[str, tuple[int, int]]:
    """Each member's (database file size, in use), as etcd reports them."""
    done = lab.etcdctl("endpoint", "status", "-w", "json")
    assert done.returncode == 0, done.stderr
    ip_name = {f"{BASE}.{i}": f"etcd0{i}" for i in (1, 2, 3)}
    return {ip_name[s["Endpoint"].split("//")[1].split(":")[0]]: (s["Status"]["dbSize"], s["Status"]["dbSizeInUse"])
            for s in json.loads(done.stdout)}


def _compacted(lab: Lab, free: float = 0.5) -> dict[str, tuple[int, int]]:
    """_sizes once every member has applied the compaction (--physical waits for the one asked only) and has at
    least `free` of its file free. bbolt counts a freed page as in use until its next write commits, and a NOSPACE
    alarm stops the writes: there only some of it shows as free."""
    deadline = time.monotonic() + 30
    while True:
        lab.etcdctl("put", "defrag-nudge", "x")  # a write commits the pages bbolt still holds (refused under NOSPACE)
        sizes = _sizes(lab)
        if all(size - in_use >= size * free for size, in_use in sizes.values()):
            return sizes
        assert time.monotonic() < deadline, sizes
        time.sleep(0.5)


def _file_size(lab: Lab, name: str) -> int:
    return (lab.root(name) / "opt/etcd/data/member/snap/db").stat().st_size


def _churn(lab: Lab, keys: int) -> bool:
    """Write `keys` large values, delete them and compact: the file keeps their pages, free. False when etcd
    refused a write for lack of space."""
    wrote = True
    for i in range(keys):
        done = lab.etcdctl("put", f"big/{i}", stdin=VALUE, timeout="20s")
        if done.returncode != 0:
            assert "database space exceeded" in done.stderr, done.stderr
            wrote = False
            break
    assert lab.etcdctl("del", "--prefix", "big/").returncode == 0
    revision = json.loads(lab.etcdctl("endpoint", "status", "-w", "json").stdout)[0]["Status"]["header"]["revision"]
    compacted = lab.etcdctl("compact", "--physical", str(revision))
    assert compacted.returncode == 0 or "required revision has been compacted" in compacted.stderr, compacted.stderr
    return wrote


def _defrag(lab: Lab, name: str) -> tuple[subprocess.CompletedProcess[str], str]:
    """`systemctl start etcd-defrag.service` on a node, and the line it logged."""
    done = lab.systemctl(name, "start", "etcd-defrag.service")
    log = (lab.root(name) / "run/shim/etcd-defrag.service.log").read_text().splitlines()
    return done, log[-1] if log else ""


def test_defrag_shrinks_its_own_member_under_a_writer_and_leaves_a_small_one_alone(lab: Lab) -> None:
    assert _churn(lab, 10)
    before = _compacted(lab)
    assert all(size > 6 << 20 for size, _ in before.values()), before
    file_before = _file_size(lab, "etcd01")

    writer = Writer(lambda k, v: lab.etcdctl("put", k, v).returncode == 0, "during-defrag/", 0.05)
    writer.start()
    time.sleep(1)
    done, line = _defrag(lab, "etcd01")
    time.sleep(1)
    writer.finish("defrag of etcd01, with a second of writes before and after")
    assert done.returncode == 0, lab.logs()
    assert line.startswith("etcd-seed: defrag: defragmented etcd01 (") and " MiB -> " in line, line
    after = _sizes(lab)
    print(f"\netcd01: {before['etcd01'][0]} -> {after['etcd01'][0]} bytes; file {file_before} -> "
          f"{_file_size(lab, 'etcd01')}")
    assert after["etcd01"][0] * 2 < before["etcd01"][0] and _file_size(lab, "etcd01") * 2 < file_before
    # Its own member only: the others keep their free pages until their own minute.
    assert after["etcd02"][0] >= before["etcd02"][0] and after["etcd03"][0] >= before["etcd03"][0]
    listed = lab.etcdctl("get", "--prefix", "--keys-only", "during-defrag/")
    writer.assert_all_readable(set(listed.stdout.split()))

    # Nothing worth reclaiming now: left alone, and the unit still succeeds.
    done, line = _defrag(lab, "etcd01")
    assert done.returncode == 0, line
    assert line.startswith("etcd-seed: defrag: etcd01 left alone: ") and "less than 50%" in line, line


def test_defrag_waits_for_every_member_to_be_healthy(lab: Lab) -> None:
    subprocess.run(["kill", "-KILL", str(lab.pid("etcd03"))], check=True)
    try:
        done, line = _defrag(lab, "etcd02")
    finally:
        assert lab.systemctl("etcd03", "start", "etcd.service").returncode == 0
    assert done.returncode != 0
    assert line.startswith("etcd-seed: ERROR: defrag: not every member answers ("), line
    lab.wait_healthy()


def test_nospace_alarm_is_cleared_once_every_member_is_under_its_quota(lab: Lab) -> None:
    assert not _churn(lab, 40), "the quota was never reached"
    _compacted(lab, free=0.1)
    alarms = lab.etcdctl("alarm", "list")
    assert "alarm:NOSPACE" in alarms.stdout, alarms.stdout + alarms.stderr
    assert lab.etcdctl("put", "after", "x").returncode != 0
    # status names the alarm (etcd answers /health with 503 and the reason) and calls nothing down.
    report = lab.status()
    assert report.returncode == 1 and "problem: etcd01: not healthy (ALARM NOSPACE)" in report.stdout, report.stdout
    assert "down" not in report.stdout and " ALARM NOSPACE " in report.stdout.splitlines()[1], report.stdout
    # A backup under the alarm: etcd serves a snapshot then, when one is most needed.
    done = lab.systemctl("etcd02", "start", "etcd-backup.service")
    log = (lab.root("etcd02") / "run/shim/etcd-backup.service.log").read_text()
    assert done.returncode == 0 and "etcd-seed: backup: " in log, log
    # Each member, at its own minute, shrinks its file; the alarm stays while another member's file is still above
    # 80% of the quota (which members' files reach it first varies from run to run), and the run after which none
    # is clears it.
    for name in ("etcd01", "etcd02", "etcd03"):
        others = [size for member, (size, _) in _sizes(lab).items() if member != name]
        done, line = _defrag(lab, name)
        assert done.returncode == 0, line
        assert line.startswith(f"etcd-seed: defrag: defragmented {name} ("), line
        if max(others) * 10 >= QUOTA * 8:
            assert "; NOSPACE alarm left: a member's file is still " in line, (others, line)
        else:
            assert line.endswith("; cleared the NOSPACE alarm: every member is under its quota again"), (others, line)
            break
    assert lab.etcdctl("alarm", "list").stdout.strip() == ""
    assert lab.etcdctl("put", "after", "x").returncode == 0
