"""Version changes: a patch or one minor step up is allowed, skips and downgrades refused, the roll spelled out."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.cli import run
from tests.helpers.specs import fake_bundle


def build_at(workdir: Path, version: str, *extra: str, command: str = "build") -> tuple[int, str, str]:
    """Point the spec at `version` (with a fake tarball of that version) and run build or plan."""
    (workdir / "etcd.tar.gz").write_bytes(fake_bundle(version))
    spec = workdir / "cluster.yaml"
    text = spec.read_text()
    current = text.split('version: "', 1)[1].split('"', 1)[0]
    spec.write_text(text.replace(f'version: "{current}"', f'version: "{version}"', 1))
    return run(command, "--spec", str(spec), "--out", str(workdir / "out"), *extra)


def test_minor_upgrade_is_planned_with_the_rolling_order(workdir: Path) -> None:
    """3.4 -> 3.5: plan says it is an upgrade and gives the order; build writes it."""
    assert build_at(workdir, "3.4.23")[0] == 0
    code, out, err = build_at(workdir, "3.5.1", command="plan")
    assert code == 0, err
    assert "upgrade: etcd 3.4.23 -> 3.5.1 (one minor step)" in out
    assert "roll the changed seeds one node at a time" in out and "(1. etcd01; 2. etcd02; 3. etcd03)" in out
    assert "take the leader last" in out
    code, out, _ = build_at(workdir, "3.5.1")
    assert code == 0 and "upgrade: etcd 3.4.23 -> 3.5.1" in out
    assert '"etcd_version": "3.5.1"' in (workdir / "out" / "demo" / "manifest.json").read_text()


@pytest.mark.parametrize(("before", "after", "expected"), [
    ("3.4.23", "3.6.0", "error: etcd.version: 3.4.23 -> 3.6.0 skips a minor version"),
    ("3.5.1", "3.4.23", "error: etcd.version: 3.5.1 -> 3.4.23 is a downgrade"),
    ("3.5.16", "3.5.1", "error: etcd.version: 3.5.16 -> 3.5.1 is a downgrade"),
], ids=["skip-a-minor", "minor-downgrade", "patch-downgrade"])
def test_refused_version_changes_write_nothing(workdir: Path, before: str, after: str, expected: str) -> None:
    assert build_at(workdir, before)[0] == 0
    manifest = (workdir / "out" / "demo" / "manifest.json").read_bytes()
    code, _, err = build_at(workdir, after)
    assert code == 1 and expected in err, err
    assert (workdir / "out" / "demo" / "manifest.json").read_bytes() == manifest


def test_rollback_needs_its_flag(workdir: Path) -> None:
    """Going back one minor version is possible, on purpose, while an upgrade is unfinished."""
    assert build_at(workdir, "3.4.23")[0] == 0
    assert build_at(workdir, "3.5.1")[0] == 0
    code, out, err = build_at(workdir, "3.4.23", "--allow-downgrade")
    assert code == 0, err
    assert "rollback: etcd 3.5.1 -> 3.4.23" in out


def test_patch_upgrade_and_the_3_6_floor(workdir: Path) -> None:
    """A patch step is fine; 3.5 -> 3.6 from below 3.5.32 warns and names the floor, from 3.5.32 it does not."""
    assert build_at(workdir, "3.5.1")[0] == 0
    code, out, err = build_at(workdir, "3.5.16")
    assert code == 0 and "patch upgrade: etcd 3.5.1 -> 3.5.16" in out and err == ""
    code, out, err = build_at(workdir, "3.6.0", command="plan")
    assert code == 0 and "warning: etcd.version: every member must run 3.5.32 or later before moving to 3.6.0" in err
    assert build_at(workdir, "3.5.32")[0] == 0
    code, out, err = build_at(workdir, "3.6.0")
    assert code == 0 and "upgrade: etcd 3.5.32 -> 3.6.0 (one minor step)" in out and "warning" not in err


def test_renew_reissues_every_leaf_and_keeps_keys(workdir: Path) -> None:
    """--renew issues every leaf again now, with the same keys; only certificates and seeds change."""
    assert build_at(workdir, "3.5.1")[0] == 0
    pki = workdir / "out" / "demo" / "pki"
    keys = {p.name: p.read_bytes() for p in pki.glob("*.key")}
    certs = {p.name: p.read_bytes() for p in pki.glob("*.crt")}
    code, out, _ = build_at(workdir, "3.5.1", "--renew")
    assert code == 0
    assert all(f"pki: {n}: reissued (--renew)" in out for n in ("etcd01", "etcd02", "etcd03", "admin"))
    assert {p.name: p.read_bytes() for p in pki.glob("*.key")} == keys
    changed = {n for n, data in certs.items() if (pki / n).read_bytes() != data}
    assert changed == {"etcd01.crt", "etcd02.crt", "etcd03.crt", "admin.crt"}
