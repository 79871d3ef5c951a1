"""Reproducible output: same spec, same bytes; a change touches exactly the files it must."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.helpers.cli import build, run


def plan(workdir: Path) -> set[str]:
    """The files `plan` lists."""
    return {line.split()[0] for line in _plan(workdir).split(FIELDS_HEADER)[0].splitlines() if line.startswith("  ")}


def planned_fields(workdir: Path) -> list[str]:
    """The spec fields `plan` names as changed: each path, what changed, and its reach."""
    _, _, fields = _plan(workdir).partition(FIELDS_HEADER)
    return [" ".join([*line.split(":")[0].split(), line.split(":")[1].strip()]) for line in fields.splitlines()
            if line.startswith("  ")]


FIELDS_HEADER = "spec fields changed since the last build, and how such a change reaches the nodes:\n"


def _plan(workdir: Path) -> str:
    code, out, err = run("plan", "--spec", str(workdir / "cluster.yaml"), "--out", str(workdir / "out"))
    assert code == 0, err
    return out


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def edit(workdir: Path, old: str, new: str) -> None:
    spec = workdir / "cluster.yaml"
    assert old in spec.read_text()
    spec.write_text(spec.read_text().replace(old, new, 1))


def test_same_state_same_bytes(workdir: Path, tmp_path: Path) -> None:
    """Two builds that start from the same keys, certificates and CRL write identical trees, ISOs included."""
    assert build(workdir)[0] == 0
    first = snapshot(workdir / "out" / "demo")
    other = tmp_path / "again"
    other.mkdir()
    shutil.copy(workdir / "cluster.yaml", other)
    shutil.copy(workdir / "etcd.tar.gz", other)
    shutil.copytree(workdir / "out" / "demo" / "pki", other / "out" / "demo" / "pki")
    for name in [p for p in (other / "out" / "demo" / "pki").iterdir() if p.suffix not in (".crt", ".key", ".der")]:
        name.unlink()
    # The keys' record travels with them: a pki/ without its manifest is refused (tests/cli/test_key_misuse.py).
    shutil.copy(workdir / "out" / "demo" / "manifest.json", other / "out" / "demo" / "manifest.json")
    assert build(other)[0] == 0
    assert snapshot(other / "out" / "demo") == first


def test_source_date_epoch_pins_iso_dates(workdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SOURCE_DATE_EPOCH decides the dates inside the ISOs, and nothing else."""
    assert build(workdir)[0] == 0
    default = snapshot(workdir / "out" / "demo")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    assert build(workdir)[0] == 0
    pinned = snapshot(workdir / "out" / "demo")
    changed = {p for p in default if default[p] != pinned[p]}
    assert changed == {"etcd01/seed.iso", "etcd02/seed.iso", "etcd03/seed.iso", "manifest.json"}
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "soon")
    code, _, err = build(workdir)
    assert code == 1 and "error: SOURCE_DATE_EPOCH: 'soon' is not a whole number" in err


def test_no_change_plans_nothing(workdir: Path) -> None:
    assert build(workdir)[0] == 0
    assert plan(workdir) == set()


def test_one_node_change_touches_only_that_node(workdir: Path) -> None:
    """A new MAC for etcd02 changes etcd02's network-config, its instance-id (meta-data, and the line of the install
    step that records it as applied) and ISO only."""
    assert build(workdir)[0] == 0
    edit(workdir, '"52:54:00:00:00:02"', '"52:54:00:00:00:22"')
    node_files = {"etcd02/network-config", "etcd02/meta-data", "etcd02/user-data", "etcd02/user-data.redacted",
                  "etcd02/seed.iso"}
    assert plan(workdir) == node_files | {"manifest.json"}
    assert planned_fields(workdir) == ["nodes.etcd02.mac changed cloud-init"]
    before = snapshot(workdir / "out" / "demo")
    redacted = (workdir / "out/demo/etcd02/user-data.redacted").read_text().splitlines()
    assert build(workdir)[0] == 0
    after = snapshot(workdir / "out" / "demo")
    assert {p for p in before if before[p] != after[p]} == node_files | {"manifest.json"}
    now = (workdir / "out/demo/etcd02/user-data.redacted").read_text().splitlines()
    differ = [(a, b) for a, b in zip(redacted, now, strict=True) if a != b]
    assert len(differ) == 1 and all(line.startswith("      seed=etcd02-") for line in differ[0]), differ


def test_timeout_change_rewrites_three_options_and_isos(workdir: Path) -> None:
    """A new heartbeat rewrites every node's options.env and what embeds it, and no certificate."""
    assert build(workdir)[0] == 0
    edit(workdir, "heartbeat_interval: 100", "heartbeat_interval: 150")
    per_node = ("options.env", "user-data", "user-data.redacted", "meta-data", "seed.iso")
    assert plan(workdir) == {f"etcd0{i}/{f}" for i in (1, 2, 3) for f in per_node} | {"manifest.json"}
    assert planned_fields(workdir) == ["etcd.heartbeat_interval changed restart"]


def test_added_member(workdir: Path) -> None:
    """A fourth node new to a built cluster needs join: true; without it the build refuses and writes nothing (it would
    bootstrap a cluster of its own). With it, it gets new files and no founder's seed changes but the first node's
    (which creates the new member's etcd user); old certs stay."""
    assert build(workdir)[0] == 0
    before = snapshot(workdir / "out")
    edit(workdir, "etcd:\n", '  - {name: etcd04, ip: 192.168.0.4, mac: "52:54:00:00:00:04"}\netcd:\n')
    code, _, err = build(workdir)
    assert code == 1 and "error: nodes.3.join: etcd04 is new to the built cluster (etcd01, etcd02, etcd03)" in err
    assert snapshot(workdir / "out") == before
    edit(workdir, 'mac: "52:54:00:00:00:04"}', 'mac: "52:54:00:00:00:04", join: true}')
    planned = plan(workdir)
    assert {"pki/etcd04.crt", "pki/etcd04.key", "etcd04/seed.iso", "pki/etcdctl.env", "known_hosts"} <= planned
    assert not {p for p in planned if p.startswith(("etcd02/", "etcd03/"))}, planned
    first = {"etcd01/meta-data", "etcd01/seed.iso", "etcd01/user-data", "etcd01/user-data.redacted"}
    assert {p for p in planned if p.startswith("etcd01/")} == first, planned
    certs_and_keys = {p for p in planned if p.startswith("pki/") and p.endswith((".crt", ".key"))}
    assert certs_and_keys == {"pki/etcd04.crt", "pki/etcd04.key", "pki/etcd04.ssh.key"}


def test_plan_names_no_field_for_a_tree_written_before_fields_were_kept(workdir: Path) -> None:
    """A manifest without `fields` gives nothing to compare: the files are listed, no field is guessed; the next
    build records the fields, and a change after it is named."""
    assert build(workdir)[0] == 0
    manifest = workdir / "out/demo/manifest.json"
    document = json.loads(manifest.read_text())
    del document["fields"]
    manifest.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    edit(workdir, "heartbeat_interval: 100", "heartbeat_interval: 150")
    assert "etcd01/options.env" in plan(workdir) and planned_fields(workdir) == []
    assert build(workdir)[0] == 0
    edit(workdir, "heartbeat_interval: 150", "heartbeat_interval: 200")
    assert planned_fields(workdir) == ["etcd.heartbeat_interval changed restart"]
