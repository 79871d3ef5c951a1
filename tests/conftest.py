"""Shared fixtures: specs, a small fake etcd bundle, and a built cluster."""

from __future__ import annotations

import datetime as dt
import gzip
import io
import tarfile
from pathlib import Path

import pytest

from generator.pki import KeyRecords, PkiState, build_pki
from generator.spec import Spec, load_spec

ROOT = Path(__file__).resolve().parent.parent
NOW = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
NO_RECORDS = KeyRecords()  # a first build: no manifest yet


def records(state: PkiState) -> KeyRecords:
    """What the manifest of a build that wrote `state` records of its keys."""
    return KeyRecords(recorded=state.public_keys(), ca_recorded=True)

SPEC_TEMPLATE = """\
cluster: {{name: demo, domain: example.com}}
network: {{prefix: 24, gateway: {gateway}, dns: [{gateway}]}}
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
              key_type: str = "rsa2048", gateway: str | None = None) -> str:
    """The text of a valid spec with `count` nodes at base.1 .. base.count."""
    nodes = "\n".join(
        f'  - {{name: etcd{i:02d}, ip: {base}.{i}, mac: "52:54:00:00:00:{i:02x}"}}'
        for i in range(1, count + 1))
    return SPEC_TEMPLATE.format(nodes=nodes, bundle=bundle, key_type=key_type,
                                gateway=gateway or f"{base}.254")


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


@pytest.fixture(scope="session")
def fake_bundle_bytes() -> bytes:
    return fake_bundle()


@pytest.fixture
def workdir(tmp_path: Path, fake_bundle_bytes: bytes) -> Path:
    """A directory with cluster.yaml (3 nodes) and its fake bundle."""
    (tmp_path / "etcd.tar.gz").write_bytes(fake_bundle_bytes)
    (tmp_path / "cluster.yaml").write_text(spec_yaml())
    return tmp_path


def parse(text: str, base_dir: Path = ROOT) -> Spec:
    spec, _warnings = load_spec(text, base_dir=base_dir)
    return spec


@pytest.fixture(scope="session")
def spec3() -> Spec:
    return parse(spec_yaml())


@pytest.fixture(scope="session")
def pki3(spec3: Spec) -> PkiState:
    return build_pki(spec3, {}, None, NOW, NO_RECORDS)

