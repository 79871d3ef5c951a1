"""verify: a fresh build passes; each single tampering fails it, naming the file and the reason."""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from generator.certs import CA, issue_leaf, load_key
from generator.iso import SeedEntry, build_iso, read_iso
from generator.pki import node_identity
from tests.helpers.cli import build, run
from tests.helpers.specs import fake_bundle, parse, spec_yaml

ROOT_NAME = "demo"


def verify(workdir: Path, *extra: str) -> tuple[int, str, str]:
    return run("verify", "--spec", str(workdir / "cluster.yaml"), "--out", str(workdir / "out"), *extra)


@pytest.fixture
def tree(workdir: Path) -> Path:
    assert build(workdir)[0] == 0
    return workdir / "out" / ROOT_NAME


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


def test_fresh_build_passes(workdir: Path, tree: Path) -> None:
    """Straight after a build, verify finds nothing."""
    code, out, err = verify(workdir)
    assert (code, err) == (0, "")
    assert "0 errors, 0 warnings" in out


def _flip_byte(tree: Path) -> None:
    data = bytearray((tree / "etcd02" / "network-config").read_bytes())
    data[-2] ^= 0x01
    (tree / "etcd02" / "network-config").write_bytes(bytes(data))


def _swap_key(tree: Path) -> None:
    shutil.copy(tree / "pki" / "etcd01.key", tree / "pki" / "etcd02.key")


def _expire_cert(tree: Path) -> None:
    pki = tree / "pki"
    ca = CA(cert=x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes()),
            key=load_key((pki / "ca.key").read_bytes()))
    key = load_key((pki / "etcd03.key").read_bytes())
    spec = parse(spec_yaml())
    old = issue_leaf(ca, node_identity(spec, spec.nodes[2]), key, dt.datetime.now(dt.UTC) - dt.timedelta(days=400),
                     365)
    (pki / "etcd03.crt").write_bytes(old.chain_pem)


def _misspell(tree: Path) -> None:
    edit(tree / "etcd01" / "options.env", "ETCD_HEARTBEAT_INTERVAL=", "ETCD_HEARTBEAT_INTERVALL=")


def _loosen_key(tree: Path) -> None:
    (tree / "pki" / "etcd03.key").chmod(0o644)


def _client_auth_off(tree: Path) -> None:
    edit(tree / "etcd02" / "options.env", "ETCD_CLIENT_CERT_AUTH=true", "ETCD_CLIENT_CERT_AUTH=false")


def _auto_tls_on(tree: Path) -> None:
    edit(tree / "etcd02" / "options.env", "ETCD_PEER_AUTO_TLS=false", "ETCD_PEER_AUTO_TLS=true")


def _flag_and_variable(tree: Path) -> None:
    edit(tree / "etcd01" / "etcd.service", "/usr/local/bin/etcd\n", "/usr/local/bin/etcd --data-dir=/srv/etcd\n")


def _plaintext_listener(tree: Path) -> None:
    edit(tree / "etcd03" / "options.env", "ETCD_LISTEN_CLIENT_URLS=", "ETCD_LISTEN_CLIENT_URLS=http://0.0.0.0:2379,")


def _seed_differs(tree: Path) -> None:
    iso = tree / "etcd01" / "seed.iso"
    files = read_iso(iso.read_bytes())
    assert b'hostname: "etcd01"' in files["user-data"]
    files["user-data"] = files["user-data"].replace(b'hostname: "etcd01"', b'hostname: "evil01"')
    iso.write_bytes(build_iso([SeedEntry(n, d) for n, d in files.items()], 0))


def _key_readable(tree: Path) -> None:
    edit(tree / "etcd02" / "user-data", 'etcd.key\n    owner: root:root\n    permissions: "0600"',
         'etcd.key\n    owner: root:root\n    permissions: "0644"')


def _broken_key(tree: Path) -> None:
    """etcd02's key with a wrong private exponent: same public half, but it cannot sign."""
    key = serialization.load_pem_private_key((tree / "pki" / "etcd02.key").read_bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    n = key.private_numbers()
    bad = rsa.RSAPrivateNumbers(n.p, n.q, n.d + 2, n.dmp1, n.dmq1, n.iqmp, n.public_numbers)
    pem = bad.private_key(unsafe_skip_rsa_key_validation=True).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    (tree / "pki" / "etcd02.key").write_bytes(pem)


TAMPERING: list[tuple[str, Callable[[Path], None], str]] = [
    ("changed-byte", _flip_byte, "etcd02/network-config: sha256 differs from the manifest"),
    ("swapped-key", _swap_key, "pki/etcd02.crt: does not match its key"),
    ("expired-cert", _expire_cert, "pki/etcd03.crt: expired on"),
    ("misspelt-variable", _misspell, "etcd01/options.env: ETCD_HEARTBEAT_INTERVALL is not an etcd setting"),
    ("key-mode", _loosen_key, "pki/etcd03.key: mode is 0644; a secret must be 0600"),
    ("client-cert-auth-off", _client_auth_off, "etcd02/options.env: ETCD_CLIENT_CERT_AUTH must be true"),
    ("peer-auto-tls-on", _auto_tls_on, "etcd02/options.env: ETCD_PEER_AUTO_TLS must not be true"),
    ("flag-and-variable", _flag_and_variable,
     "etcd01/etcd.service: --data-dir is also set as ETCD_DATA_DIR in options.env"),
    ("plaintext-listener", _plaintext_listener,
     "etcd03/options.env: ETCD_LISTEN_CLIENT_URLS has plaintext http://0.0.0.0:2379"),
    ("seed-differs", _seed_differs, "etcd01/seed.iso: its user-data differs from etcd01/user-data"),
    ("broken-key", _broken_key, "pki/etcd02.key: "),
    ("key-readable-on-node", _key_readable, "etcd02/user-data: /var/lib/etcd-seed/seed/etcd.key must be 0600"),
]


@pytest.mark.parametrize(("tamper", "expected"), [(t, e) for _, t, e in TAMPERING],
                         ids=[i for i, _, _ in TAMPERING])
def test_tampering_fails_verify(workdir: Path, tree: Path, tamper: Callable[[Path], None],
                                expected: str) -> None:
    """One change at a time: verify exits 1 and names the file and the reason."""
    tamper(tree)
    code, _out, err = verify(workdir)
    assert code == 1, err
    assert f"error: {expected}" in err, err


def test_expiry_thresholds(workdir: Path, tree: Path) -> None:
    """Certificates inside --warn-days are warnings; inside --fail-days, errors."""
    code, _, err = verify(workdir, "--warn-days", "400", "--fail-days", "7")
    assert code == 0 and "warning: pki/etcd01.crt: expires on" in err
    code, _, err = verify(workdir, "--warn-days", "400", "--fail-days", "400")
    assert code == 1 and "error: pki/etcd01.crt: expires on" in err


def test_spec_change_is_noticed(workdir: Path, tree: Path) -> None:
    """After the spec moves a node, the old tree no longer matches it."""
    edit(workdir / "cluster.yaml", "ip: 192.168.0.3", "ip: 192.168.0.33")
    code, _, err = verify(workdir)
    assert code == 1
    assert "pki/etcd03.crt: SANs are" in err
    assert "etcd01/options.env: differs from what the spec renders" in err


def test_removed_variable_for_3_6(tmp_path: Path) -> None:
    """ETCD_ENABLE_V2 is fine for 3.5 but an error for 3.6, which removed the v2 API."""
    (tmp_path / "etcd.tar.gz").write_bytes(fake_bundle("3.6.0"))
    (tmp_path / "cluster.yaml").write_text(spec_yaml().replace('version: "3.5.1"', 'version: "3.6.0"'))
    assert build(tmp_path)[0] == 0
    edit(tmp_path / "out" / ROOT_NAME / "etcd01" / "options.env", "ETCD_NAME=", "ETCD_ENABLE_V2=true\nETCD_NAME=")
    code, _, err = verify(tmp_path)
    assert code == 1 and "etcd01/options.env: ETCD_ENABLE_V2 was removed in etcd 3.6" in err


def test_cloud_init_schema_runs_in_verify(workdir: Path, tree: Path) -> None:
    """verify runs Debian's cloud-init schema on each user-data."""
    if shutil.which("cloud-init") is None:
        pytest.skip("cloud-init is missing; make test installs it")
    edit(tree / "etcd03" / "user-data", 'permissions: "0600"', "permissions: [1, 2]")
    code, _, err = verify(workdir)
    assert code == 1 and "error: etcd03/user-data: cloud-init schema:" in err


def test_reviewer_checkout_without_secrets(workdir: Path, tree: Path, tmp_path: Path) -> None:
    """A git clone of the committed tree (no keys, user-data or ISOs) verifies, with a warning per secret."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    out = workdir / "out"
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@e", "PATH": "/usr/bin:/bin"}
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "c"]):
        subprocess.run(["git", "-C", str(out), *args], check=True, env=env, capture_output=True)
    review = tmp_path / "review"
    review.mkdir()
    shutil.copy(workdir / "cluster.yaml", review)
    subprocess.run(["git", "clone", "-q", str(out), str(review / "out")], check=True)
    code, _, err = verify(review)
    assert code == 0, err
    assert "warning: pki/etcd01.key: secret not present here" in err
    assert "warning: etcd02/seed.iso: secret not present here" in err
    edit(review / "out" / "demo" / "etcd02" / "options.env", "ETCD_PEER_CLIENT_CERT_AUTH=true",
         "ETCD_PEER_CLIENT_CERT_AUTH=false")
    code, _, err = verify(review)
    assert code == 1 and "error: etcd02/options.env: ETCD_PEER_CLIENT_CERT_AUTH must be true" in err
