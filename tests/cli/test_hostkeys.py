"""SSH host keys made offline: one ed25519 key per node, kept across re-seeds, secret, and listed in known_hosts."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from tests.helpers.cli import build, set_spec, verify

NODES = {"etcd01": "192.168.0.1", "etcd02": "192.168.0.2", "etcd03": "192.168.0.3"}


@pytest.fixture
def built(workdir: Path) -> Path:
    code, _, err = build(workdir)
    assert code == 0, err
    return workdir / "out" / "demo"


def _ssh_keys(root: Path, node: str) -> dict[str, str]:
    keys: dict[str, str] = yaml.safe_load((root / node / "user-data").read_text())["ssh_keys"]
    return keys


def _derived_public(root: Path, node: str) -> str:
    """What ssh-keygen derives from the node's private host key file."""
    done = subprocess.run(["ssh-keygen", "-y", "-f", str(root / "pki" / f"{node}.ssh.key")], capture_output=True,
                          text=True, check=True)
    return done.stdout.strip()


@pytest.mark.parametrize("node", sorted(NODES))
def test_known_hosts_names_each_node_by_name_fqdn_and_ip(built: Path, node: str) -> None:
    """ssh-keygen -F finds the node's own host key under each of its three names, and no other key."""
    public = _derived_public(built, node)
    for host in (node, f"{node}.example.com", NODES[node]):
        done = subprocess.run(["ssh-keygen", "-F", host, "-f", str(built / "known_hosts")], capture_output=True,
                              text=True, check=False)
        assert done.returncode == 0, (host, done.stderr)
        found = [line for line in done.stdout.splitlines() if not line.startswith("#")]
        assert len(found) == 1 and found[0].split(" ", 1)[1] == public, done.stdout
    listed = subprocess.run(["ssh-keygen", "-l", "-f", str(built / "known_hosts")], capture_output=True, text=True,
                            check=True).stdout.splitlines()
    assert len(listed) == len(NODES) and all(line.endswith("(ED25519)") for line in listed), listed


@pytest.mark.parametrize("node", sorted(NODES))
def test_seed_carries_the_key_for_cloud_init(built: Path, node: str) -> None:
    """user-data's ssh_keys holds the private key file and its own public half; the reviewed copy holds neither
    private key, only their sha256."""
    keys = _ssh_keys(built, node)
    assert set(keys) == {"ed25519_private", "ed25519_public"}
    assert keys["ed25519_private"] == (built / "pki" / f"{node}.ssh.key").read_text()
    assert keys["ed25519_public"] == _derived_public(built, node)
    redacted = (built / node / "user-data.redacted").read_text()
    assert "OPENSSH PRIVATE KEY" not in redacted and "PRIVATE KEY-----" not in redacted
    assert keys["ed25519_public"] in redacted


def test_host_key_is_secret(built: Path, workdir: Path) -> None:
    for node in NODES:
        key = built / "pki" / f"{node}.ssh.key"
        assert key.stat().st_mode & 0o777 == 0o600
        loaded = serialization.load_ssh_private_key(key.read_bytes(), password=None)
        assert isinstance(loaded, ed25519.Ed25519PrivateKey)
    subprocess.run(["git", "init", "-q", str(workdir)], check=True)
    ignored = subprocess.run(["git", "-C", str(workdir), "check-ignore", "out/demo/pki/etcd01.ssh.key",
                              "out/demo/known_hosts"], capture_output=True, text=True, check=False).stdout.split()
    assert ignored == ["out/demo/pki/etcd01.ssh.key"]  # known_hosts is public and committed


def test_host_key_survives_a_reseed(built: Path, workdir: Path) -> None:
    """A changed setting gives every node a new seed (a new instance-id), and the same host key."""
    before = {n: (built / "pki" / f"{n}.ssh.key").read_bytes() for n in NODES}
    known = (built / "known_hosts").read_bytes()
    meta = (built / "etcd01" / "meta-data").read_text()
    set_spec(workdir, "heartbeat_interval: 100", "heartbeat_interval: 150")
    assert build(workdir)[0] == 0
    assert (built / "etcd01" / "meta-data").read_text() != meta
    assert {n: (built / "pki" / f"{n}.ssh.key").read_bytes() for n in NODES} == before
    assert (built / "known_hosts").read_bytes() == known
    assert all(_ssh_keys(built, n)["ed25519_private"].encode() == before[n] for n in NODES)
    assert verify(workdir)[0] == 0


def test_replaced_node_gets_a_new_host_key(built: Path, workdir: Path) -> None:
    """A lost machine's host key counts as exposed: its replacement gets a new one, and only its line changes."""
    known = (built / "known_hosts").read_text().splitlines()
    set_spec(workdir, "{name: etcd03, ", "{name: etcd03, replace: true, ")
    code, out, _ = build(workdir)
    assert code == 0 and "pki: etcd03.ssh: new key (ssh host key, replace)" in out, out
    after = (built / "known_hosts").read_text().splitlines()
    assert [a == b for a, b in zip(known, after, strict=True)] == [True, True, True, True, False]
    assert after[-1].startswith("etcd03,etcd03.example.com,192.168.0.3 ssh-ed25519 ")


def test_foreign_host_key_is_refused(built: Path, workdir: Path) -> None:
    """A host key that is not the recorded one is never adopted: the build names it and writes nothing."""
    other = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
    path = built / "pki" / "etcd02.ssh.key"
    path.write_bytes(other)
    manifest = (built / "manifest.json").read_bytes()
    code, _, err = build(workdir)
    assert code == 1 and "error: pki/etcd02.ssh.key: differs from the key manifest.json" in err, err
    assert (built / "manifest.json").read_bytes() == manifest and path.read_bytes() == other
    code, _, err = verify(workdir)
    assert code == 1 and "pki/etcd02.ssh.key: its public key differs from the one manifest.json records" in err, err


def test_missing_recorded_host_key_is_refused(built: Path, workdir: Path) -> None:
    (built / "pki" / "etcd01.ssh.key").unlink()
    code, _, err = build(workdir)
    assert code == 1 and "error: pki/etcd01.ssh.key: missing, but manifest.json records it" in err, err
    assert not (built / "pki" / "etcd01.ssh.key").exists()


def test_tampered_known_hosts_fails_verify(built: Path, workdir: Path) -> None:
    """Another key put in known_hosts for a node is caught: it is not the node's key, nor what the build wrote."""
    other = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    path = built / "known_hosts"
    lines = path.read_text().splitlines()
    lines[3] = f"etcd02,etcd02.example.com,192.168.0.2 {other}"
    path.write_text("\n".join(lines) + "\n")
    code, _, err = verify(workdir)
    assert code == 1, err
    assert "error: known_hosts: etcd02: is not the host key in pki/etcd02.ssh.key" in err
    assert "error: known_hosts: sha256 differs from the manifest" in err


@pytest.mark.parametrize(("content", "expected"), [
    (b"-----BEGIN OPENSSH PRIVATE KEY-----\nnot a key\n-----END OPENSSH PRIVATE KEY-----\n",
     "not an unencrypted OpenSSH private key"),
    (b"\x00\xff" * 100, "not an unencrypted OpenSSH private key"),
    ("rsa", "not an ed25519 key"),
    (b"A" * (2 << 20), "more than the 1048576 allowed"),
    ("fifo", "not a regular file"),
])
def test_hostile_host_key_file_is_refused(built: Path, workdir: Path, content: bytes | str,
                                          expected: str) -> None:
    """Whatever stands at pki/<node>.ssh.key, it is never replaced, adopted or read without bound."""
    import os

    path = built / "pki" / "etcd01.ssh.key"
    path.unlink()
    if content == "fifo":
        os.mkfifo(path)
    elif content == "rsa":
        subprocess.run(["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-N", "", "-f", str(path)], check=True)
    else:
        assert isinstance(content, bytes)
        path.write_bytes(content)
    manifest = (built / "manifest.json").read_bytes()
    code, _, err = build(workdir)
    assert code == 1 and "pki/etcd01.ssh.key" in err and expected in err, err
    assert all(line.startswith(("error: ", "hint: ")) for line in err.splitlines()), err
    assert (built / "manifest.json").read_bytes() == manifest
