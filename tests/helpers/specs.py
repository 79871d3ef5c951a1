"""Specs and fake material for tests that never run etcd: spec text, a fake release tarball, PEM stand-ins."""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import io
import tarfile
from pathlib import Path
from typing import Any

from generator.etcd import BOLT_MAGIC
from generator.loader import load_spec
from generator.pki import KeyRecords, PkiState
from generator.render import NodePem
from generator.spec import Spec

ROOT = Path(__file__).resolve().parent.parent.parent
# Debian trixie's etcd 3.5.16, packed as a release tarball: `make test` builds it.
TRIXIE = ROOT / "vendor" / "etcd-v3.5.16-linux-amd64.tar.gz"
NOW = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
NO_RECORDS = KeyRecords()  # a first build: no manifest yet


def records(state: PkiState) -> KeyRecords:
    """What the manifest of a build that wrote `state` records of its keys."""
    return KeyRecords(recorded=state.public_keys(), ca_recorded=True)

SPEC_TEMPLATE = """\
cluster: {{name: demo, domain: example.com}}
network: {{prefix: 24, gateway: {gateway}, dns: [{gateway}]{ntp}}}
nodes:
{nodes}
etcd:
  version: "3.5.1"
  bundle: {bundle}
  heartbeat_interval: 100
  election_timeout: 1000
pki: {{key_type: {key_type}, validity_days: 365}}
flannel: {{network: 10.2.0.0/16, backend: vxlan, subnet_len: 24}}
"""


def spec_yaml(base: str = "192.168.0", count: int = 3, bundle: str = "etcd.tar.gz",
              key_type: str = "rsa2048", gateway: str | None = None, ntp: str | None = None) -> str:
    """The text of a valid spec with `count` nodes at base.1 .. base.count; `ntp` is network.ntp's flow text."""
    nodes = "\n".join(
        f'  - {{name: etcd{i:02d}, ip: {base}.{i}, mac: "52:54:00:00:00:{i:02x}"}}'
        for i in range(1, count + 1))
    return SPEC_TEMPLATE.format(nodes=nodes, bundle=bundle, key_type=key_type,
                                gateway=gateway or f"{base}.254", ntp=f", ntp: {ntp}" if ntp else "")


def fake_bundle(version: str = "3.5.1", top: str | None = None) -> bytes:
    """A tiny tarball laid out like an etcd release, for tests that never run etcd."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name in ("etcd", "etcdctl"):
            data = f"#!/bin/sh\necho fake {name}\n".encode()
            info = tarfile.TarInfo(f"{top or f'etcd-v{version}-linux-amd64'}/{name}")
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0)


def fake_snapshot(body: bytes = b"keys") -> bytes:
    """Bytes shaped as `etcdctl snapshot save` writes: bbolt meta pages, then the sha256 of the rest."""
    page = bytearray(4096)
    page[16:20] = BOLT_MAGIC.to_bytes(4, "little")
    data = bytes(page) + body.ljust(4096, b"\0")
    return data + hashlib.sha256(data).digest()


def parse(text: str, base_dir: Path = ROOT) -> Spec:
    spec, _warnings = load_spec(text, base_dir=base_dir)
    return spec


# Stand-ins for real PEMs so that golden files stay byte-stable.
FAKE_CA = b"-----BEGIN CERTIFICATE-----\nFAKE-CA\n-----END CERTIFICATE-----\n"
FAKE_CRL = b"\x30\x03FAKE-CRL\x00\xff"  # bytes no text file holds: the seed must carry them as they are


def fake_pem(name: str) -> NodePem:
    """A node's material as fixed text: what the golden files were rendered with."""
    leaf = f"-----BEGIN CERTIFICATE-----\nFAKE-{name}\n-----END CERTIFICATE-----\n".encode()
    key = f"-----BEGIN PRIVATE KEY-----\nFAKE-KEY-{name}\n-----END PRIVATE KEY-----\n".encode()
    host = f"-----BEGIN OPENSSH PRIVATE KEY-----\nFAKE-HOST-KEY-{name}\n-----END OPENSSH PRIVATE KEY-----\n".encode()
    return NodePem(FAKE_CA, leaf + FAKE_CA, key, host, f"ssh-ed25519 AAAAFAKEHOSTKEY{name.replace('-', '')}",
                   FAKE_CRL)


# A spec that sets a field of every section and list (but the ones that read files): the field table's tests
# change one field of it at a time.
FULL_SPEC: dict[str, Any] = {
    "cluster": {"name": "demo", "domain": "example.com"},
    "network": {"prefix": 24, "gateway": "10.8.0.254", "dns": ["10.8.0.254"], "search": ["example.com"],
                "ntp": {"servers": ["10.8.0.254"], "pools": ["pool.example.com"], "wait_seconds": 60}},
    "nodes": [{"name": f"etcd0{i}", "ip": f"10.8.0.{i}", "mac": f"52:54:00:00:00:0{i}"} for i in (1, 2, 3)],
    "etcd": {"version": "3.5.16", "url": "https://dl.example/etcd.tgz", "sha256": "a" * 64,
             "heartbeat_interval": 100, "election_timeout": 1000, "token": "tok", "plaintext_localhost": False,
             "auto_compaction_mode": "periodic", "auto_compaction_retention": "1h",
             "quota_backend_bytes": 2 << 30, "data_device": "/dev/vdb", "data_fs": "ext4"},
    "pki": {"key_type": "ecdsa-p256", "validity_days": 365, "ca_validity_days": 3650, "renew_before_days": 30},
    "backup": {"enabled": True, "schedule": "daily", "keep": 7, "dir": "/var/backups/etcd"},
    "defrag": {"enabled": True, "schedule": "03:30", "stagger_minutes": 10, "min_free_percent": 50},
    "flannel": {"network": "10.2.0.0/16", "backend": "vxlan", "subnet_len": 24},
    "admin": {"name": "ops", "sudo": True, "ssh_authorized_keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB o@e"]},
    "auth": {"enabled": True},
    "clients": [{"name": "flannel", "use": "flannel"},
                {"name": "reader", "use": "etcdctl", "cn": "reader", "o": "org", "validity_days": 90,
                 "dir": "/etc/reader", "revoked": False, "access": [{"prefix": "/app/", "mode": "read"}]}],
}
DELETE = object()  # put(): leave the field out


def put(data: Any, path: str, value: Any) -> None:
    """Set a dotted path ("nodes.1.ip") in a loaded spec, making mappings on the way; DELETE leaves it out."""
    *parents, last = path.split(".")
    for part in parents:
        data = data[int(part)] if isinstance(data, list) else data.setdefault(part, {})
    if value is DELETE:
        del data[int(last) if isinstance(data, list) else last]
    elif isinstance(data, list):
        data[int(last):int(last) + 1] = [value]
    else:
        data[last] = value
