"""`etcd-seed status` against members that lie or stall: fake members (TLS servers in network namespaces, serving
the certificates the build issued, since real etcd cannot be made to give these answers) send non-finite
metrics, /members entries that are not etcd's, JSON nested too deep, an oversized body, or a byte at a time.
Each case ends as one problem line naming the member within one deadline per node, and the report of the
honest members stands."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import netns
from tests.helpers.cli import run
from tests.helpers.specs import ROOT, fake_bundle, spec_yaml

pytestmark = [pytest.mark.skipif(netns.available() is not None, reason=str(netns.available()))]
BASE = "10.236.0"
NAMES = ["etcd01", "etcd02", "etcd03"]
IPS = [f"{BASE}.{i}" for i in (1, 2, 3)]
TIMEOUT_S = 3.0


class Fakes:
    def __init__(self, net: netns.TestNet, work: Path) -> None:
        self.net, self.work = net, work
        self.namespaces = {name: net.add_host(i + 1, ip) for i, (name, ip) in enumerate(zip(NAMES, IPS, strict=True))}
        self.procs: dict[str, subprocess.Popen[str]] = {}

    def start(self, name: str, mode: str) -> None:
        self.stop(name)
        pki = self.work / "out" / "demo" / "pki"
        argv = [sys.executable, "-m", "tests.helpers.fake_member", IPS[NAMES.index(name)], str(pki / f"{name}.crt"),
                str(pki / f"{name}.key"), str(pki / "ca.crt"), mode, ",".join(NAMES), ",".join(IPS)]
        proc = subprocess.Popen(self.net.command(self.namespaces[name], argv), cwd=ROOT, stdout=subprocess.PIPE,
                                text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "listening"
        self.procs[name] = proc

    def stop(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is not None:
            proc.kill()
            proc.wait(timeout=10)
            if proc.stdout is not None:
                proc.stdout.close()

    def status(self) -> tuple[int, dict[str, object], float]:
        argv = [sys.executable, "-m", "generator", "status", "--spec", str(self.work / "cluster.yaml"), "--out",
                str(self.work / "out"), "--timeout", str(TIMEOUT_S), "--json"]
        began = time.monotonic()
        done = subprocess.run(self.net.command(self.net.hub, argv), cwd=ROOT, capture_output=True, text=True,
                              timeout=60, check=False)
        took = time.monotonic() - began
        assert not done.stderr, done.stderr
        return done.returncode, json.loads(done.stdout), took


@pytest.fixture(scope="module")
def fakes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fakes]:
    work = tmp_path_factory.mktemp("hostile-status")
    (work / "etcd.tar.gz").write_bytes(fake_bundle())
    (work / "cluster.yaml").write_text(spec_yaml(base=BASE))
    code, _, err = run("build", "--spec", str(work / "cluster.yaml"), "--out", str(work / "out"))
    assert code == 0, err
    with netns.TestNet("sh", f"{BASE}.254", 24) as net:
        lab = Fakes(net, work)
        try:
            for name in NAMES:
                lab.start(name, "honest")
            yield lab
        finally:
            for name in NAMES:
                lab.stop(name)


# The fakes speak HTTP/1.1 only, so no fake has a seed record to show (status reads it over gRPC): each row is
# `unknown` for that alone, and says so. Lying gRPC answers are in tests/unit/test_kvread.py; the honest read, on
# real etcd, in tests/etcd/test_status.py.
def _no_grpc(name: str) -> str:
    return (f"{name}: cannot tell which seed it runs ({BASE}.{NAMES.index(name) + 1}:2379 does not offer HTTP/2, "
            "which etcd's gRPC needs); roll it, or see docs/operations.md")


def _besides_the_seed(problems: object) -> list[str]:
    assert isinstance(problems, list)
    return [p for p in problems if p not in {_no_grpc(n) for n in NAMES}]


def test_honest_fakes_are_healthy(fakes: Fakes) -> None:
    """The fakes' honest answers pass but for their seed record: what the lying cases change is the only difference."""
    code, report, _ = fakes.status()
    assert (code, report["problems"]) == (1, [_no_grpc(n) for n in NAMES]), report
    rows = report["rows"]
    assert isinstance(rows, list) and [r["state"] for r in rows] == ["unknown"] * 3


@pytest.mark.parametrize(("mode", "port", "says"), [
    ("nan", 2379, "answers /metrics with values that are not finite numbers in range: "
                  "etcd_mvcc_db_total_size_in_bytes"),
    ("inf", 2379, "answers /metrics with values that are not finite numbers in range: "
                  "etcd_server_proposals_applied_total"),
    ("member-id", 2380, "answers /members with an entry that is not etcd's"),
    ("member-name-list", 2380, "answers /members with an entry that is not etcd's"),
    ("nested-health", 2379, "answers with JSON nested too deep to be etcd's"),
    ("huge-metrics", 2379, "answers GET /metrics with more than 4 MiB"),
    ("drip", 2379, f"no complete answer within {TIMEOUT_S:g} s"),
    ("drip-headers", 2379, f"no complete answer within {TIMEOUT_S:g} s"),
])
def test_a_lying_or_stalling_member_is_one_problem(fakes: Fakes, mode: str, port: int, says: str) -> None:
    fakes.start("etcd02", mode)
    try:
        code, report, took = fakes.status()
    finally:
        fakes.start("etcd02", "honest")
    problems = _besides_the_seed(report["problems"])
    print(f"\n{mode}: {problems} in {took:.1f} s")
    assert code == 1
    assert len(problems) == 1 and problems[0].startswith("etcd02: ") and says in problems[0], problems
    assert took < TIMEOUT_S + 5, took  # one deadline per node, whatever the member sends
    rows = report["rows"]
    assert isinstance(rows, list)
    assert [r["node"] for r in rows if r["reachable"] and r["client_cert"] == "current"] == \
        (["etcd01", "etcd03"] if port == 2379 else NAMES)
