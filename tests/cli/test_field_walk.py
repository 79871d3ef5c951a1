"""The field walk: every field of the table changed on a built tree, one at a time, reaches the nodes as its row
says, or the build refuses it naming the field.

What a change does is read from what the build wrote: which seeds changed, which staged files in them (and
whether the install step restarts etcd for that file: node.STAGED_FILES' `restart`, the flag the install script
acts on), the tarball's sha256, and the files outside the seeds. The node side of each reach is tested where it
runs: a restart for options.env and none for a renewed leaf in tests/etcd/test_converge.py
(test_changed_options_restart_once, test_renewed_leaf_is_served_without_a_restart), the first node's auth step
in tests/etcd/test_auth_apply.py, the membership steps and cloud-init's re-run of a new instance in the VM
scenarios.
"""

from __future__ import annotations

import copy
import datetime as dt
import gzip
import io
import json
import re
import shutil
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from generator import fields
from generator.fields import Reach
from generator.node import STAGED_FILES
from generator.paths import PATHS
from tests.helpers.cli import run
from tests.helpers.specs import DELETE, FULL_SPEC, fake_snapshot, put

# The walk's start: every field set, but the default token (derived from the domain, so that a new domain is
# seen at its strongest) and on the root disk (the changes that test a data disk set one).
BASE = copy.deepcopy(FULL_SPEC)
del BASE["etcd"]["data_device"], BASE["etcd"]["data_fs"], BASE["etcd"]["token"]
# For each field: the change made (path -> new value, DELETE to leave one out), and for a step what its note says.
CHANGES: dict[str, tuple[dict[str, Any], str]] = {
    "cluster.name": ({"cluster.name": "other"}, ""),  # with the tree moved to out/other (else a new tree)
    "cluster.domain": ({"cluster.domain": "example.org"}, ""),
    "network.prefix": ({"network.prefix": 16}, ""),
    "network.gateway": ({"network.gateway": "10.8.0.253"}, ""),
    "network.dns": ({"network.dns": ["10.8.0.9"]}, ""),
    "network.search": ({"network.search": ["example.net"]}, ""),
    "network.ntp.servers": ({"network.ntp.servers": ["10.8.0.9"]}, ""),
    "network.ntp.pools": ({"network.ntp.pools": ["pool.example.net"]}, ""),
    "network.ntp.wait_seconds": ({"network.ntp.wait_seconds": 90}, ""),
    "nodes[].name": ({"nodes.1.name": "etcd09"}, ""),
    "nodes[].ip": ({"nodes.1.ip": "10.8.0.9"}, "etcdctl member update"),
    "nodes[].mac": ({"nodes.1.mac": "52:54:00:00:00:09"}, ""),
    "nodes[].fqdn": ({"nodes.1.fqdn": "other.example.com"}, ""),
    "nodes[].join": ({"nodes.1.join": True}, ""),
    "nodes[].replace": ({"nodes.1.replace": True}, "etcdctl member add etcd02"),
    "nodes[].data_device": ({"nodes.1.data_device": "/dev/vdc"}, ""),
    "nodes[].data_fs": ({"nodes.1.data_device": "/dev/vdb", "nodes.1.data_fs": "xfs"}, ""),
    "etcd.version": ({"etcd.version": "3.5.17"}, ""),
    "etcd.bundle": ({"etcd.bundle": "etcd.tar.gz", "etcd.url": DELETE, "etcd.sha256": DELETE}, ""),
    "etcd.url": ({"etcd.url": "https://mirror.example/etcd.tgz"}, ""),
    "etcd.sha256": ({"etcd.sha256": "b" * 64}, ""),
    "etcd.heartbeat_interval": ({"etcd.heartbeat_interval": 200}, ""),
    "etcd.election_timeout": ({"etcd.election_timeout": 2000}, ""),
    "etcd.token": ({"etcd.token": "other"}, ""),
    "etcd.auto_compaction_mode": ({"etcd.auto_compaction_mode": "revision", "etcd.auto_compaction_retention": "1000"},
                                  ""),
    "etcd.auto_compaction_retention": ({"etcd.auto_compaction_retention": "2h"}, ""),
    "etcd.quota_backend_bytes": ({"etcd.quota_backend_bytes": 4 << 30}, ""),
    "etcd.data_device": ({"etcd.data_device": "/dev/vdc"}, ""),
    "etcd.data_fs": ({"etcd.data_device": "/dev/vdb", "etcd.data_fs": "xfs"}, ""),
    "etcd.restore.snapshot": ({"etcd.restore": {"snapshot": "snap.db"}}, "restore: boot every member"),
    "etcd.restore.bump_revision": ({"etcd.restore": {"snapshot": "snap.db", "bump_revision": 5}},
                                   "restore: boot every member"),
    "etcd.plaintext_localhost": ({"etcd.plaintext_localhost": True}, ""),
    "backup.enabled": ({"backup.enabled": False}, ""),
    "backup.keep": ({"backup.keep": 3}, ""),
    "backup.schedule": ({"backup.schedule": "hourly"}, ""),
    "backup.dir": ({"backup.dir": "/srv/backup"}, ""),
    "defrag.enabled": ({"defrag.enabled": False}, ""),
    "defrag.stagger_minutes": ({"defrag.stagger_minutes": 5}, ""),
    "defrag.min_free_percent": ({"defrag.min_free_percent": 30}, ""),
    "defrag.schedule": ({"defrag.schedule": "04:00"}, ""),
    "pki.key_type": ({"pki.key_type": "ecdsa-p384"}, ""),
    "pki.validity_days": ({"pki.validity_days": 100}, ""),
    "pki.ca_validity_days": ({"pki.ca_validity_days": 100}, ""),
    "pki.renew_before_days": ({"pki.renew_before_days": 10}, ""),
    "pki.ca.cert": ({"pki.ca": {"cert": "other-ca.crt", "key": "other-ca.key"}}, ""),
    "pki.ca.key": ({"pki.ca": {"cert": "other-ca.crt", "key": "other-ca.key"}}, ""),
    "pki.ca_next.cert": ({"pki.ca_next": {"cert": "other-ca.crt", "key": "other-ca.key"}}, "rotate-ca"),
    "pki.ca_next.key": ({"pki.ca_next": {"cert": "other-ca.crt", "key": "other-ca.key"}}, "rotate-ca"),
    "clients[].name": ({"clients.1.name": "reader2"}, ""),
    "clients[].use": ({"clients.0.use": "etcdctl"}, ""),
    "clients[].cn": ({"clients.1.cn": "other"}, ""),
    "clients[].o": ({"clients.1.o": "org2"}, ""),
    "clients[].validity_days": ({"clients.1.validity_days": 91}, ""),
    "clients[].dir": ({"clients.0.dir": "/etc/fl"}, ""),
    "clients[].access": ({"clients.1.access": [{"prefix": "/b/", "mode": "write"}]}, ""),
    "clients[].access[].prefix": ({"clients.1.access.0.prefix": "/c/"}, ""),
    "clients[].access[].key": ({"clients.1.access.0": {"key": "motd"}}, ""),
    "clients[].access[].mode": ({"clients.1.access.0.mode": "readwrite"}, ""),
    "clients[].revoked": ({"clients.1.revoked": True}, ""),
    "auth.enabled": ({"auth.enabled": False}, ""),
    "flannel.network": ({"flannel.network": "10.3.0.0/16"}, ""),
    "flannel.backend": ({"flannel.backend": "host-gw"}, ""),
    "flannel.subnet_len": ({"flannel.subnet_len": 25}, ""),
    "admin.name": ({"admin.name": "opz"}, ""),
    "admin.sudo": ({"admin.sudo": False}, ""),
    "admin.ssh_authorized_keys": ({"admin.ssh_authorized_keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIC o@e"]}, ""),
    "admin.password_hash": ({"admin.password_hash": "$6$rounds=5000$saltsaltsaltsalt$" + "a" * 86}, ""),
}
JOINER = {"name": "etcd04", "ip": "10.8.0.4", "mac": "52:54:00:00:00:04", "join": True}
# Changes that are not one field's: (the edits of the tree's first build, the edits after it, the reach the table
# gives them, what a step's note says).
EXTRA: dict[str, tuple[dict[str, Any], dict[str, Any], Reach, str]] = {
    "a node added": ({}, {"nodes.3": JOINER}, fields.ITEMS["nodes"][0], "etcd04 joins the running cluster"),
    "a node removed": ({}, {"nodes.2": DELETE}, fields.ITEMS["nodes"][1], "etcd03 left the spec: take it out"),
    "a client added": ({}, {"clients.2": {"name": "kube"}}, fields.ITEMS["clients"][0], ""),
    "a client removed": ({}, {"clients.1": DELETE}, fields.ITEMS["clients"][1], ""),
    "the node order": ({}, {"nodes": [BASE["nodes"][2], BASE["nodes"][0], BASE["nodes"][1]]}, fields.ORDER_REACH, ""),
    "join cleared": ({"nodes.3": JOINER}, {"nodes.3.join": DELETE}, Reach.RESTART, ""),
    "replace cleared": ({"nodes.1.replace": True}, {"nodes.1.replace": DELETE}, Reach.RESTART, ""),
    "restore removed": ({"etcd.restore": {"snapshot": "snap.db"}}, {"etcd.restore": DELETE}, Reach.RESTART, ""),
}
RESTARTS = {row.name for row in STAGED_FILES if row.restart}
INSTALL = PATHS.install_bin.rsplit("/", 1)[-1]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _staged(user_data: bytes) -> dict[str, str]:
    """A seed's staged files by name, and its install step with what changes on every seed left out."""
    files = {f["path"].rsplit("/", 1)[-1]: f.get("content", "") for f in yaml.safe_load(user_data)["write_files"]}
    files[INSTALL] = re.sub(r"[0-9a-f]{64}", "<sha256>", re.sub(r"(?m)^seed=.*$", "", files[INSTALL]))
    return files


def _changed(before: dict[str, str], after: dict[str, str]) -> set[str]:
    return {name for name in before.keys() | after.keys() if before.get(name) != after.get(name)}


def observed(before: dict[str, bytes], after: dict[str, bytes], first: str, tree: str) -> Reach | None:
    """The reach that what the build wrote under out/<tree>/ shows, the strongest first."""
    changed = {path.split("/")[1] for path in after if path.endswith("/user-data") and before.get(path) != after[path]}
    tarball = [json.loads(files[f"{tree}/manifest.json"])["bundle"]["sha256"] for files in (before, after)]
    staged = {name: _changed(_staged(before.get(f"{tree}/{name}/user-data", b"write_files: [{path: /x}]")),
                             _staged(after[f"{tree}/{name}/user-data"])) for name in changed}
    if tarball[0] != tarball[1] or any(files & RESTARTS for files in staged.values()):
        return Reach.RESTART
    if any(files for name, files in staged.items() if name != first):
        return Reach.RELOAD
    if any(staged.values()):
        return Reach.FIRST_NODE
    if changed:
        return Reach.CLOUD_INIT
    return Reach.TREE if any(before.get(p) != after[p] for p in after) else None


def _tarball(version: str, payload: bytes) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name in ("etcd", "etcdctl"):
            info = tarfile.TarInfo(f"etcd-v{version}-linux-amd64/{name}")
            info.size, info.mode = len(payload), 0o755
            tar.addfile(info, io.BytesIO(payload))
    return gzip.compress(raw.getvalue(), mtime=0)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """BASE built once; each case copies it."""
    work = tmp_path_factory.mktemp("walk")
    (work / "etcd.tar.gz").write_bytes(_tarball("3.5.16", b"#!/bin/sh\necho other build\n"))
    (work / "snap.db").write_bytes(fake_snapshot())
    (work / "cluster.yaml").write_text(yaml.safe_dump(BASE))
    code, _, err = run("build", "--spec", str(work / "cluster.yaml"), "--out", str(work / "out"))
    assert code == 0, err
    _other_ca(work)
    return work


def _other_ca(work: Path) -> None:
    """An imported CA's files, the one a change of pki.ca or pki.ca_next names."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "other CA")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    (work / "other-ca.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (work / "other-ca.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                          serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))
    (work / "other-ca.key").chmod(0o600)


def test_every_field_has_a_change() -> None:
    assert set(CHANGES) == {path for row in fields.FIELDS for path in row.paths}
    # A flag with a reach of its own when cleared has a case in EXTRA.
    assert {row.paths for row in fields.FIELDS if row.cleared} == {("nodes[].join",), ("nodes[].replace",),
                                                                   ("etcd.restore.snapshot",),
                                                                   ("etcd.restore.bump_revision",)}


def _build(work: Path, spec: dict[str, Any]) -> tuple[int, str, str]:
    (work / "cluster.yaml").write_text(yaml.safe_dump(spec))
    return run("build", "--spec", str(work / "cluster.yaml"), "--out", str(work / "out"))


def _edited(edits: dict[str, Any], start: dict[str, Any] = BASE) -> dict[str, Any]:
    spec = copy.deepcopy(start)
    for where, value in edits.items():
        put(spec, where, value)
    return spec


def _check(work: Path, spec: dict[str, Any], reach: Reach, note: str, concrete: str) -> None:
    """Build `spec` over the tree in `work` and check that what happened is `reach`."""
    before = _files(work / "out")
    code, out, err = _build(work, spec)
    if reach in (Reach.REFUSED, Reach.REPLACE):
        assert code == 1, out
        assert _files(work / "out") == before, "a refused build wrote"
        lines = [line for line in err.splitlines() if line.startswith("error: ")]
        assert lines and all(line.startswith(f"error: {concrete}") for line in lines), err
        if reach is Reach.REPLACE:
            assert "replace: true" in err, err
        return
    if reach is Reach.STEP:  # done, or refused with the command that starts it
        assert note in out + err and (code == 0 or all(line.startswith(f"error: {concrete}")
                                                       for line in err.splitlines())), (out, err)
        return
    assert code == 0, err
    assert observed(before, _files(work / "out"), spec["nodes"][0]["name"], spec["cluster"]["name"]) is reach, \
        (out, err)


@pytest.mark.parametrize("path", list(CHANGES))
def test_a_changed_field_reaches_the_nodes_as_its_row_says(built: Path, tmp_path: Path, path: str) -> None:
    row = fields.row_of(path)
    assert row is not None
    work = tmp_path / "w"
    shutil.copytree(built, work, symlinks=True)
    edits, note = CHANGES[path]
    if path == "cluster.name":
        (work / "out/demo").rename(work / "out/other")
    concrete = next(iter(edits)).rsplit(".", 1)[0] if path.count("[]") else path.rsplit(".", 1)[0]
    _check(work, _edited(edits), row.reach, note, concrete)


@pytest.mark.parametrize("case", list(EXTRA))
def test_an_item_added_or_removed_the_node_order_and_a_cleared_flag_reach_the_nodes_as_the_table_says(
        built: Path, tmp_path: Path, case: str) -> None:
    first, edits, reach, note = EXTRA[case]
    work = tmp_path / "w"
    shutil.copytree(built, work, symlinks=True)
    start = _edited(first)
    if first:
        code, _, err = _build(work, start)
        assert code == 0, err
    _check(work, _edited(edits, start), reach, note, "")
