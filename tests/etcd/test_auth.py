"""etcd's authentication from the seeds, on real etcd in network namespaces: the first node's auth step gives every
certificate CN its user and every consumer its role; each identity can do exactly what its grant says; a re-seed
reconciles added, removed and changed consumers; and auth turns on under running writers without cutting off a
consumer that has a role."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.cli import set_spec
from tests.helpers.converge import BASE, DEBIAN_34, NEEDS, UPSTREAM, Lab, converged_lab
from tests.helpers.etcd_checks import Writer, wallet

pytestmark = NEEDS
CLIENTS = """\
clients:
  - {name: flannel, use: flannel}
  - {name: kube-apiserver, use: kube-apiserver, cn: kube-apiserver-etcd-client, o: "system:masters"}
  - {name: reader, access: [{prefix: /app/, mode: read}, {key: motd, mode: readwrite}]}
  - {name: metrics, use: prometheus}
  - {name: dashy, access: [{key: "--from-key"}]}
"""
AUTH_LOG = "run/shim/etcd-seed-auth.service.log"


@pytest.fixture(scope="module", params=["3.5.1", "3.4.23"])
def lab(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """Upstream's 3.5.1, and Debian bookworm's 3.4.23 (whose etcdctl has no `auth status`)."""
    tarball = UPSTREAM if request.param == "3.5.1" else DEBIAN_34
    with converged_lab(tmp_path_factory.mktemp("auth") / "lab", tarball, request.param, "au",
                       extra=CLIENTS) as lab:
        _auth_line(lab, 1)
        yield lab


def _auth_line(lab: Lab, count: int, timeout: float = 120) -> str:
    """The etcd-seed line of the auth step's `count`th run on etcd01 (each re-seed starts it again)."""
    log = lab.root("etcd01") / AUTH_LOG
    deadline = time.monotonic() + timeout
    while True:
        text = log.read_text() if log.exists() else ""
        lines = [ln for ln in text.splitlines() if ln.startswith("etcd-seed: auth:")]
        if len(lines) >= count:
            return lines[count - 1]
        if time.monotonic() > deadline:
            pytest.fail(f"no auth line #{count}:\n{log.read_text() if log.exists() else '(no log)'}\n{lab.logs()}")
        time.sleep(0.5)


def _wallet(lab: Lab, name: str) -> Path:
    return wallet(lab.out / "pki", name, lab.work / f"wallet-{name}")


def _can(lab: Lab, who: str, *args: str) -> bool:
    done = lab.etcdctl(*args, cert_dir=None if who == "admin" else _wallet(lab, who))
    assert done.returncode == 0 or "permission denied" in done.stderr or "user name" in done.stderr, done.stderr
    return done.returncode == 0


# (identity, etcdctl arguments, allowed): what each grant allows and refuses.
MATRIX: list[tuple[str, tuple[str, ...], bool]] = [
    ("admin", ("put", "/anything", "x"), True),
    ("admin", ("user", "list"), True),
    ("flannel", ("put", "/coreos.com/network/subnets/10.2.7.0-24", "lease"), True),
    ("flannel", ("get", "/coreos.com/network/", "--prefix"), True),
    ("flannel", ("get", "/registry/", "--prefix"), False),
    ("flannel", ("put", "/registry/pods/x", "evil"), False),
    ("kube-apiserver", ("put", "/registry/pods/default/a", "pod"), True),
    ("kube-apiserver", ("put", "compact_rev_key", "1"), True),
    ("kube-apiserver", ("get", "/coreos.com/network/", "--prefix"), False),
    ("kube-apiserver", ("put", "/coreos.com/network/config", "evil"), False),
    ("kube-apiserver", ("user", "list"), False),
    ("reader", ("get", "/app/", "--prefix"), True),
    ("reader", ("put", "/app/x", "evil"), False),
    ("reader", ("put", "motd", "hello"), True),
    ("reader", ("get", "/registry/", "--prefix"), False),
    ("metrics", ("get", "/", "--prefix"), False),
    ("etcd02", ("user", "list"), True),  # a node holds root: its member steps, backups and defrag need it
    # A key that looks like an etcdctl flag stays one key: no from-key range (CNs cannot start with "-").
    ("dashy", ("get", "--", "--from-key"), True),
    ("dashy", ("get", "/registry/", "--prefix"), False),
    ("dashy", ("get", "", "--from-key"), False),
]


def test_each_identity_gets_exactly_its_grant(lab: Lab) -> None:
    line = _auth_line(lab, 1)
    assert line.startswith("etcd-seed: auth: on; 9 users and 4 roles in step (role dashy added; ") and \
        "user kube-apiserver-etcd-client added" in line, line
    rows = []
    for who, args, allowed in MATRIX:
        got = _can(lab, who, *args)
        rows.append(f"{who:16} {' '.join(args):55} {'allowed' if got else 'refused'}")
        assert got == allowed, rows[-1]
    # kube-apiserver's compactor: a transaction on compact_rev_key, then a compaction (which needs no grant).
    revision = lab.etcdctl("put", "/registry/pods/default/b", "pod", "-w", "json").stdout.split('"revision":')[1]
    assert _can(lab, "kube-apiserver", "compaction", revision.split(",")[0].split("}")[0])
    rows.append(f"{'kube-apiserver':16} {'compaction <rev>':55} allowed")
    # Prometheus scrapes /metrics, which etcd serves outside authentication.
    wallet = _wallet(lab, "metrics")
    scraped = subprocess.run(lab.net.command(lab.net.hub, [
        "curl", "-sS", "--cacert", str(lab.out / "pki/ca.crt"), "--cert", str(wallet / "admin.crt"), "--key",
        str(wallet / "admin.key"), f"https://{BASE}.1:2379/metrics"]), capture_output=True, text=True, check=False)
    assert "etcd_server_has_leader 1" in scraped.stdout, scraped.stderr
    rows.append(f"{'metrics':16} {'GET /metrics':55} allowed")
    print("\n" + "\n".join(rows))


def test_reseed_reconciles_new_removed_and_changed_consumers(lab: Lab) -> None:
    """A consumer added, one removed and one whose grant changed: a re-seed of etcd01 alone brings etcd in step; the
    other nodes' seeds do not change."""
    others = {n: (lab.out / n / "user-data.redacted").read_text() for n in ("etcd02", "etcd03")}
    set_spec(lab.work, "{prefix: /app/, mode: read}", "{prefix: /app/, mode: readwrite}")
    set_spec(lab.work, "  - {name: metrics, use: prometheus}\n",
             "  - {name: metrics, use: prometheus}\n  - {name: newbie, access: [{prefix: /new/, mode: write}]}\n")
    lab.build()
    assert {n: (lab.out / n / "user-data.redacted").read_text() for n in others} == others
    # Taking a consumer out revokes its certificate: that changes every seed (its CRL), not only etcd01's.
    set_spec(lab.work, "  - {name: metrics, use: prometheus}\n", "")
    lab.build()
    lab.stage("etcd01")
    lab.converge("etcd01")
    line = _auth_line(lab, 2)
    for change in ("role newbie added", "reader may readwrite /app/*", "newbie may write /new/*", "user newbie added",
                   "user metrics deleted"):
        assert change in line, line
    assert _can(lab, "reader", "put", "/app/x", "now allowed")
    assert _can(lab, "newbie", "put", "/new/a", "x") and not _can(lab, "newbie", "get", "/new/a")
    assert "metrics" not in lab.etcdctl("user", "list").stdout.split()
    # The same seed again changes nothing.
    lab.converge("etcd01")
    assert _auth_line(lab, 3) == "etcd-seed: auth: on; 9 users and 5 roles in step"
    # With auth on, etcd01 reports its new seed as its own user and status reads it as the admin; the others have
    # not rolled the new CRL, which nothing but their records shows. A consumer cannot forge a record.
    lab.wait_reported("etcd01")
    status = lab.status().stdout
    assert [(line.split()[0], line.endswith(" in step")) for line in status.splitlines()[1:4]] == \
        [("etcd01", True), ("etcd02", False), ("etcd03", False)], status
    assert "next: etcd0" in status and " behind\n" in status, status
    assert not _can(lab, "reader", "put", "/etcd-seed/seed/etcd02", "etcd02-0123456789abcdef")


def _writer(lab: Lab, who: str, prefix: str, failed: list[str]) -> Writer:
    wallet = None if who == "admin" else _wallet(lab, who)

    def put(key: str, value: str) -> bool:
        ok = lab.etcdctl("put", key, value, cert_dir=wallet).returncode == 0
        if not ok:
            failed.append(key)
        return ok

    return Writer(put, prefix, 0.1)


def test_auth_turns_on_under_running_writers(lab: Lab) -> None:
    """An existing cluster with auth off turns it on by a re-seed of its first node while flannel, kube-apiserver
    and the admin keep writing: no consumer with a role loses a write, and every acknowledged write is there."""
    set_spec(lab.work, "etcd:\n", "auth: {enabled: false}\netcd:\n")
    lab.build()
    lab.stage("etcd01")
    lab.converge("etcd01")
    assert _auth_line(lab, 4).startswith("etcd-seed: auth: off;")
    assert _can(lab, "reader", "put", "/registry/x", "anyone may, with auth off")
    failed: dict[str, list[str]] = {"flannel": [], "kube-apiserver": [], "admin": []}
    writers = {who: _writer(lab, who, prefix, failed[who]) for who, prefix in (
        ("flannel", "/coreos.com/network/subnets/w"), ("kube-apiserver", "/registry/w/"), ("admin", "/w/"))}
    for writer in writers.values():
        writer.start()
    time.sleep(2)
    set_spec(lab.work, "auth: {enabled: false}\n", "auth: {enabled: true}\n")
    lab.build()
    lab.stage("etcd01")
    lab.converge("etcd01")
    assert _auth_line(lab, 5).startswith("etcd-seed: auth: on;")
    time.sleep(2)
    for who, writer in writers.items():
        writer.finish(f"{who} writing while auth turns on")
    for who, writer in writers.items():
        prefix = writer.prefix
        present = set(lab.etcdctl("get", prefix, "--prefix", "--keys-only").stdout.split())
        writer.assert_all_readable(present)
        assert failed[who] == [], f"{who} lost writes: {failed[who][:5]}"
    assert not _can(lab, "reader", "put", "/registry/x", "refused again")
