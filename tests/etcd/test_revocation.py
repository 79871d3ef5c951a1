"""Revocation on real etcd: members converged from their seeds refuse a certificate that a re-seed put on the CRL,
on its next connection and with no restart, while every other identity keeps working; a rekeyed node's old
certificate is refused as a client and as a peer once the others run the new seeds."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.cli import run, set_spec
from tests.helpers.converge import BASE, NEEDS, UPSTREAM, Lab, converged_lab
from tests.helpers.etcd_checks import wallet

pytestmark = NEEDS
NODES = ("etcd01", "etcd02", "etcd03")
LEFT_RUNNING = "etcd left running: it reads its certificate and CRL again on the next handshake"
CLIENTS = "clients:\n  - {name: flannel, use: flannel}\n  - {name: reader, access: [{key: probe}]}\n"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with converged_lab(tmp_path_factory.mktemp("revocation") / "lab", UPSTREAM, "3.5.1", "rv", extra=CLIENTS) as lab:
        yield lab


def _wallet(lab: Lab, name: str, where: Path) -> Path:
    return wallet(lab.out / "pki", name, where)


def _handshake_refused(lab: Lab, wallet: Path, ip: str) -> bool:
    """The member refuses the certificate itself: not an answer from etcd (such as permission denied)."""
    done = lab.etcdctl("get", "probe", endpoints=[ip], cert_dir=wallet)
    return done.returncode != 0 and "etcdserver:" not in done.stderr


def _allowed(lab: Lab, wallet: Path, ip: str) -> bool:
    """A read the identity's role allows (auth is on): etcdctl fails only when the connection is refused."""
    key = "/coreos.com/network/config" if wallet.name == "flannel" else "probe"
    return lab.etcdctl("get", key, endpoints=[ip], cert_dir=wallet).returncode == 0


def _reseed(lab: Lab, name: str) -> str:
    lab.stage(name)
    return lab.converge(name)


def test_revoked_client_is_refused_without_a_restart(lab: Lab, tmp_path: Path) -> None:
    """reader's certificate is renewed first (same key, both valid); revoking reader revokes both, and every
    member refuses both."""
    before_renewal = _wallet(lab, "reader", tmp_path / "reader-before-renewal")
    _cli_build(lab, "--renew")
    for name in NODES:  # the renewal rolled out (--renew reissues the CRL too), etcd left running
        assert _reseed(lab, name).endswith(f": etcd.crt, crl.der; {LEFT_RUNNING}"), name
    reader, flannel = _wallet(lab, "reader", tmp_path / "reader"), _wallet(lab, "flannel", tmp_path / "flannel")
    assert (before_renewal / "admin.crt").read_bytes() != (reader / "admin.crt").read_bytes()
    ips = [f"{BASE}.{i}" for i in (1, 2, 3)]
    assert all(_allowed(lab, w, ip) for ip in ips for w in (before_renewal, reader, flannel))
    pids = {name: lab.pid(name) for name in NODES}
    set_spec(lab.work, "  - {name: reader, access: [{key: probe}]}\n",
             "  - {name: reader, access: [{key: probe}], revoked: true}\n")
    lab.build()
    line = _reseed(lab, "etcd01")
    assert line.endswith(f": crl.der, member.json; {LEFT_RUNNING}"), line  # etcd01 also drops reader's etcd user
    # Only the member that runs the new seed refuses its certificate so far (etcd01's auth step also deletes its
    # etcd user, so the others may answer permission denied: an answer, not a refused handshake).
    assert _handshake_refused(lab, reader, ips[0]) and not _handshake_refused(lab, reader, ips[1])
    for name in NODES[1:]:
        assert _reseed(lab, name).endswith(f": crl.der; {LEFT_RUNNING}"), name
    assert {name: lab.pid(name) for name in NODES} == pids, "no member restarted"
    for ip in ips:
        assert _handshake_refused(lab, reader, ip) and _handshake_refused(lab, before_renewal, ip), ip
        refused = lab.etcdctl("get", "probe", endpoints=[ip], cert_dir=reader)
        assert _allowed(lab, flannel, ip) and lab.etcdctl("get", "probe", endpoints=[ip]).returncode == 0, ip
    assert "revoked" in lab.logs()
    print(f"\nrevoked reader: refused by every member with no restart: {refused.stderr.strip()[-160:]}")


def test_rekeyed_node_old_certificate_is_refused_as_client_and_peer(lab: Lab, tmp_path: Path) -> None:
    """etcd03 gets a new key (build --rekey etcd03) and is rolled first; once the others run their new seeds, its
    old certificates, the current one and the one before its renewal, are refused on the client port and on the
    peer port, and the cluster stays healthy."""
    before_renewal = _wallet(lab, "etcd03", tmp_path / "etcd03-before-renewal")
    _cli_build(lab, "--renew")
    for name in NODES:
        _reseed(lab, name)
    old = _wallet(lab, "etcd03", tmp_path / "old-etcd03")
    assert _allowed(lab, old, f"{BASE}.1") and _allowed(lab, before_renewal, f"{BASE}.1")
    built = _cli_build(lab, "--rekey", "etcd03")
    assert "(1. etcd03; 2. etcd01; 3. etcd02)" in built, built  # the rekeyed node is rolled first
    assert _reseed(lab, "etcd03").endswith(f": etcd.key, etcd.crt, crl.der; {LEFT_RUNNING}")
    lab.wait_healthy()
    for name in ("etcd01", "etcd02"):
        _reseed(lab, name)
    lab.wait_healthy()
    new = _wallet(lab, "etcd03", tmp_path / "new-etcd03")
    for ip in (f"{BASE}.1", f"{BASE}.2"):
        assert not _allowed(lab, old, ip) and not _allowed(lab, before_renewal, ip) and _allowed(lab, new, ip), ip
        peer = {w: _peer_members(lab, w, ip) for w in (old, before_renewal, new)}
        assert peer[old].returncode != 0 and peer[before_renewal].returncode != 0 and peer[new].returncode == 0, peer


def _cli_build(lab: Lab, *extra: str) -> str:
    code, out, err = run("build", "--spec", str(lab.spec), "--out", str(lab.work / "out"), *extra)
    assert code == 0, err
    return out


def _peer_members(lab: Lab, wallet: Path, ip: str) -> subprocess.CompletedProcess[str]:
    """GET /members on a member's peer port with the certificate of `wallet`, from etcd03's address: etcd checks that a
    peer's certificate names the address it connects from."""
    argv = ["curl", "-sS", "--http1.1", "--max-time", "5", "--cacert", str(lab.out / "pki/ca.crt"), "--cert",
            str(wallet / "admin.crt"), "--key", str(wallet / "admin.key"), f"https://{ip}:2380/members"]
    return subprocess.run(lab.net.command(lab.namespaces["etcd03"], argv), capture_output=True, text=True, timeout=30,
                          check=False)
