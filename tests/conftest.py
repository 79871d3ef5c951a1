"""Shared fixtures, and a marker for each tier from its folder: unit, cli, parsers, etcd, e2e."""

from __future__ import annotations

from pathlib import Path

import pytest

from generator.pki import PkiState, build_pki
from generator.spec import Spec

from .helpers.specs import NO_RECORDS, NOW, fake_bundle, parse, spec_yaml

TIERS = ("unit", "cli", "parsers", "etcd", "e2e")
# `make test` runs the etcd tier as two pytest processes side by side, and these modules, about half its
# time, are marked etcd_side to form the second: each test network is a set of namespaces named after
# its process, so the halves never meet.
ETCD_SIDE = frozenset({"test_membership.py", "test_revocation.py", "test_auth.py", "test_status.py",
                       "test_status_hostile.py", "test_data_disk_xfs.py"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Each test is marked with its folder's tier, so that `-m` selects tiers (make test TIER=unit)."""
    here = Path(__file__).parent
    for item in items:
        tier = item.path.relative_to(here).parts[0]
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))
        if tier == "etcd" and item.path.name in ETCD_SIDE:
            item.add_marker(pytest.mark.etcd_side)


@pytest.fixture(scope="session")
def fake_bundle_bytes() -> bytes:
    return fake_bundle()


@pytest.fixture
def workdir(tmp_path: Path, fake_bundle_bytes: bytes) -> Path:
    """A directory with cluster.yaml (3 nodes) and its fake bundle."""
    (tmp_path / "etcd.tar.gz").write_bytes(fake_bundle_bytes)
    (tmp_path / "cluster.yaml").write_text(spec_yaml())
    return tmp_path


@pytest.fixture(scope="session")
def spec3() -> Spec:
    return parse(spec_yaml())


@pytest.fixture(scope="session")
def pki3(spec3: Spec) -> PkiState:
    return build_pki(spec3, {}, None, NOW, NO_RECORDS)
