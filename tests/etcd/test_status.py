"""`etcd-seed status` against members converged from their seeds, in network namespaces: healthy, a rolling
renewal node by node (followers first, the leader last), a member down, and a certificate from another CA."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.converge import NEEDS, Lab, converged_lab
from tests.helpers.specs import TRIXIE

pytestmark = NEEDS


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    if not TRIXIE.exists():
        pytest.skip(f"make test builds vendor/{TRIXIE.name} with apt-get download")
    with converged_lab(tmp_path_factory.mktemp("status") / "lab", TRIXIE, "3.5.16", "st") as lab:
        yield lab


def _status(lab: Lab, *args: str) -> subprocess.CompletedProcess[str]:
    return lab.status(*args)


def _report(lab: Lab) -> tuple[int, dict[str, Any]]:
    done = _status(lab, "--json", "--timeout", "3")
    assert not done.stderr, done.stderr
    return done.returncode, json.loads(done.stdout)


def _leader(report: dict[str, Any]) -> str:
    leaders = [str(r["node"]) for r in report["rows"] if r["leader"]]
    assert len(leaders) == 1, report
    return leaders[0]


def test_a_converged_cluster_is_healthy_and_in_step(lab: Lab) -> None:
    # A new cluster runs at cluster version 3.0 until its leader has seen every member's version (seconds).
    deadline = time.monotonic() + 60
    while "cluster version: 3.5\n" not in (done := _status(lab)).stdout:
        assert time.monotonic() < deadline, done.stdout
        time.sleep(1)
    print(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1] == "healthy and in step with the build"
    assert "next: nothing to roll" in done.stdout and "cluster version: 3.5" in done.stdout
    code, report = _report(lab)
    assert code == 0 and report["problems"] == [] and report["healthy"] is True
    assert [(r["node"], r["version"], r["client_cert"], r["peer_cert"], r["in_step"]) for r in report["rows"]] == \
        [(f"etcd0{i}", "3.5.16", "current", "current", True) for i in (1, 2, 3)]
    _leader(report)
    assert all(r["quota"] == 2 << 30 and 0 < r["db_in_use"] <= r["db_size"] and r["raft_lag"] is not None
               for r in report["rows"])


def test_a_rolling_renewal_names_followers_first_and_the_leader_last(lab: Lab) -> None:
    lab.build("--renew")
    code, report = _report(lab)
    leader = _leader(report)
    assert code == 1 and not any(r["in_step"] for r in report["rows"])
    assert sum("serves an older certificate on 2379 than pki/" in p for p in report["problems"]) == 3
    rolled: list[str] = []
    while True:
        nxt = report["next"]
        if nxt == "nothing to roll":
            break
        name = nxt.split()[0]
        assert nxt == (f"{name} (the leader, last)" if name == leader else f"{name} (a follower)"), report
        # The leader comes last: while any follower is behind, it is not named.
        assert name != leader or len(rolled) == 2, (rolled, report)
        lab.stage(name)
        lab.converge(name)
        rolled.append(name)
        code, report = _report(lab)
        assert [r["node"] for r in report["rows"] if r["in_step"]] == sorted(rolled), report
    assert rolled[-1] == leader and len(rolled) == 3
    assert code == 0, report["problems"]


def test_a_member_down_is_named_and_blocks_the_roll(lab: Lab) -> None:
    subprocess.run(["kill", "-KILL", str(lab.pid("etcd03"))], check=True)
    try:
        done = _status(lab, "--timeout", "2")
        code, report = _report(lab)
    finally:
        assert lab.systemctl("etcd03", "start", "etcd.service").returncode == 0
    print(done.stdout)
    assert done.returncode == 1 and code == 1
    assert "problem: etcd03: does not answer on 10.234.0.3:2379 (" in done.stdout
    assert report["next"] == "wait: etcd03 does not answer; roll nothing else until it is back"
    assert [r["reachable"] for r in report["rows"]] == [True, True, False]
    lab.wait_healthy()


def test_a_certificate_from_another_ca_is_named(lab: Lab, tmp_path: Path) -> None:
    """etcd reads its certificate at each handshake: a foreign one put in place shows at once, with its issuer."""
    ssl_dir = lab.root("etcd02") / "etc/ssl/etcd"
    saved = {name: (ssl_dir / name).read_bytes() for name in ("etcd.crt", "etcd.key")}
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(tmp_path / "k"), "-out", str(tmp_path / "c"), "-subj", "/CN=intruder",
                    "-addext", "subjectAltName=IP:10.234.0.2", "-days", "2"], check=True, capture_output=True)
    try:
        shutil.copy(tmp_path / "c", ssl_dir / "etcd.crt")
        shutil.copy(tmp_path / "k", ssl_dir / "etcd.key")
        done = _status(lab)
    finally:
        for name, data in saved.items():
            (ssl_dir / name).write_bytes(data)
    print(done.stdout)
    assert done.returncode == 1 and not done.stderr
    assert "problem: etcd02: serves a certificate on 2379 that this cluster's trusted CAs do not vouch for its " \
           "address 10.234.0.2: " in done.stdout
    assert "(it serves CN=intruder, issued by CN=intruder)" in done.stdout
    assert "next: stop: etcd02 serves a certificate this cluster does not trust; find out why first" in done.stdout
    assert done.stdout.splitlines()[2].split() == ["etcd02", "10.234.0.2", "-", "untrusted", "-", "-", "-", "-",
                                                   "foreign", "-", "-", "?"]
    lab.wait_healthy()
    assert _status(lab).returncode == 0
