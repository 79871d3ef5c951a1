"""Client certificates for the cluster's consumers: their shape, their ready-to-use files, and refused names."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.helpers.cli import assert_refused, build, run, set_spec, verify
from tests.helpers.parsers import sh_env, systemd_available, systemd_env
from tests.helpers.specs import ROOT, parse

CLIENTS = """clients:
  - {name: kube-apiserver, use: kube-apiserver, cn: kube-apiserver-etcd-client, o: "system:masters"}
  - {name: flannel, use: flannel, validity_days: 90}
  - {name: backup-reader, dir: /srv/etcd-client}
  - {name: metrics, use: prometheus}
"""
ENDPOINTS = "https://192.168.0.1:2379,https://192.168.0.2:2379,https://192.168.0.3:2379"


@pytest.fixture
def built(workdir: Path) -> Path:
    (workdir / "cluster.yaml").write_text((workdir / "cluster.yaml").read_text() + CLIENTS)
    code, _, err = build(workdir)
    assert code == 0, err
    return workdir / "out" / "demo"


def _leaf(root: Path, name: str) -> x509.Certificate:
    return x509.load_pem_x509_certificates((root / "pki" / f"{name}.crt").read_bytes())[0]


@pytest.mark.parametrize(("name", "cn", "o", "days"), [
    ("kube-apiserver", "kube-apiserver-etcd-client", "system:masters", 365),
    ("flannel", "flannel", None, 90),
    ("backup-reader", "backup-reader", None, 365),
    ("metrics", "metrics", None, 365),
])
def test_client_certificate_shape(built: Path, name: str, cn: str, o: str | None, days: int) -> None:
    """clientAuth only, the CN and O asked for, its own validity, chained to the CA (openssl verify agrees)."""
    cert = _leaf(built, name)
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH]
    assert [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)] == [cn]
    assert [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)] == ([o] if o else [])
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days == days  # plus the hour of backdating
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    pki = built / "pki"
    for purpose, ok in (("sslclient", True), ("sslserver", False)):
        done = subprocess.run(["openssl", "verify", "-purpose", purpose, "-CAfile", str(pki / "ca.crt"),
                               str(pki / f"{name}.crt")], capture_output=True, text=True, check=False)
        assert (done.returncode == 0) == ok, done.stdout + done.stderr
    assert (pki / f"{name}.key").stat().st_mode & 0o777 == 0o600
    facts = json.loads((built / "manifest.json").read_text())["certificates"][f"pki/{name}.crt"]
    assert facts["subject"] == cert.subject.rfc4514_string()


@pytest.mark.skipif(systemd_available() is not None, reason=str(systemd_available()))
def test_flannel_file_is_what_flanneld_reads(built: Path) -> None:
    """systemd's own EnvironmentFile parser reads exactly flanneld's five etcd variables from the file."""
    assert systemd_env(built / "clients" / "flannel.flanneld.env") == {
        "FLANNELD_ETCD_ENDPOINTS": ENDPOINTS,
        "FLANNELD_ETCD_CAFILE": "/etc/etcd-client/flannel/ca.crt",
        "FLANNELD_ETCD_CERTFILE": "/etc/etcd-client/flannel/flannel.crt",
        "FLANNELD_ETCD_KEYFILE": "/etc/etcd-client/flannel/flannel.key",
        "FLANNELD_ETCD_PREFIX": "/coreos.com/network",
    }


def test_kube_apiserver_file_is_its_etcd_flags(built: Path) -> None:
    text = (built / "clients" / "kube-apiserver.kube-apiserver.args").read_text()
    flags = [line for line in text.splitlines() if not line.startswith("#")]
    where = "/etc/etcd-client/kube-apiserver"
    assert flags == [f"--etcd-servers={ENDPOINTS}", f"--etcd-cafile={where}/ca.crt",
                     f"--etcd-certfile={where}/kube-apiserver.crt", f"--etcd-keyfile={where}/kube-apiserver.key"]
    assert "install -D -m 0600 kube-apiserver.key /etc/etcd-client/kube-apiserver/kube-apiserver.key" in text


def test_etcdctl_client_file_sources_in_sh(built: Path) -> None:
    env = sh_env(built / "clients" / "backup-reader.etcdctl.env")
    assert env["ETCDCTL_CERT"] == "/srv/etcd-client/backup-reader.crt"
    assert env["ETCDCTL_CACERT"] == "/srv/etcd-client/ca.crt"
    assert env["ETCDCTL_ENDPOINTS"] == ENDPOINTS


def test_example_spec_has_the_kubernetes_defaults() -> None:
    """The example wires kube-apiserver with the CN and O Kubernetes documents, and flannel."""
    spec = parse((ROOT / "cluster.yaml").read_text())
    by_name = {c.name: c for c in spec.clients}
    assert (by_name["kube-apiserver"].cn, by_name["kube-apiserver"].o) == ("kube-apiserver-etcd-client",
                                                                           "system:masters")
    assert by_name["flannel"].use.value == "flannel"


def test_clients_are_renewed_and_verified_like_leaves(built: Path, workdir: Path) -> None:
    serial = _leaf(built, "flannel").serial_number
    code, out, _ = run("build", "--spec", str(workdir / "cluster.yaml"), "--out", str(workdir / "out"), "--renew")
    assert code == 0 and "pki: flannel: reissued (--renew)" in out
    assert _leaf(built, "flannel").serial_number != serial
    assert verify(workdir)[0] == 0
    # The flannel certificate swapped for the admin's: verify names the file and what is wrong with it.
    (built / "pki" / "flannel.crt").write_bytes((built / "pki" / "admin.crt").read_bytes())
    code, _, err = verify(workdir)
    assert code == 1 and "error: pki/flannel.crt: subject is 'CN=root', expected 'CN=flannel'" in err, err
    # A build puts it right again, keeping the key.
    code, out, _ = build(workdir)
    assert code == 0 and "pki: flannel: reissued" in out


@pytest.mark.parametrize(("entry", "field"), [
    ("{name: etcd02}", "clients.0.name"),
    ("{name: admin}", "clients.0.name"),
    ("{name: ca}", "clients.0.name"),
    ("{name: ca-next}", "clients.0.name"),
    ("{name: Flannel}", "clients.0.name"),
    ("{name: flannel, use: calico}", "clients.0.use"),
    ("{name: flannel, cn: \"x\\ny\"}", "clients.0.cn"),
    ("{name: flannel, o: \"a,b\"}", "clients.0.o"),
    ("{name: flannel, dir: relative/path}", "clients.0.dir"),
    ("{name: flannel, dir: \"/etc/$(reboot)\"}", "clients.0.dir"),
    ("{name: flannel, validity_days: 10}", "clients.0.validity_days"),
    ("{name: flannel, colour: blue}", "clients.0.colour"),
    ("{name: flannel}\n  - {name: flannel}", "clients.1.name"),
    ("{name: flannel, cn: root}", "clients.0.cn"),  # etcd's root user: the admin's identity
    ("{name: flannel, cn: etcd02}", "clients.0.cn"),  # a node's own etcd user
])
def test_bad_client_is_refused(workdir: Path, entry: str, field: str) -> None:
    (workdir / "cluster.yaml").write_text((workdir / "cluster.yaml").read_text() + f"clients:\n  - {entry}\n")
    err = assert_refused(workdir, field)
    assert "Traceback" not in err


def test_node_named_like_a_rotation_file_is_refused(workdir: Path) -> None:
    set_spec(workdir, "name: etcd03,", "name: ca-bundle,")
    assert_refused(workdir, "nodes.2.name")
