"""The install step's table of units, run by real sh: a unit a new seed no longer runs on a node is stopped,
disabled and its files removed (module included), with one line of news; one it runs is started after the seed
is applied. `systemctl` is a recording stand-in: the block is run alone, in a scratch root, not as PID 1's."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from generator import node as node_facts
from generator.decisions import decide
from generator.render import PATHS, make_environment, render_node
from tests.helpers.specs import fake_pem, parse, spec_yaml

SHA = "0" * 64
OFF_START, OFF_END = "# The units this seed does not run here", "# Every unit this seed runs"


def _script(text: str, node: str) -> str:
    spec = parse(text)
    target = next(n for n in spec.nodes if n.name == node)
    files = render_node(make_environment(), spec, decide(spec), target, fake_pem(node), SHA)
    data = yaml.safe_load(files.texts["user-data"])
    return str(next(f["content"] for f in data["write_files"] if f["path"] == PATHS.install_bin))


def _run_off_block(script: str, root: Path, tmp_path: Path) -> tuple[str, list[str]]:
    block = script[script.index(OFF_START):script.index(OFF_END)]
    shim = tmp_path / "bin"
    shim.mkdir(exist_ok=True)
    (shim / "systemctl").write_text(f'#!/bin/sh\necho "$*" >> {tmp_path}/systemctl.log\n')
    (shim / "systemctl").chmod(0o755)
    done = subprocess.run(["sh", "-euc", f'root={root}\nchanged=""\n{block}\nprintf "%s" "$changed"'],
                          env={"PATH": f"{shim}:/usr/bin:/bin"}, capture_output=True, text=True, check=True)
    log = tmp_path / "systemctl.log"
    return done.stdout, log.read_text().splitlines() if log.exists() else []


def _put(root: Path, unit: node_facts.Unit) -> list[Path]:
    paths = [root / f.dest.lstrip("/") for f in unit.files]
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("from the last seed\n")
    return paths


UNIT = {u.name: u for u in node_facts.UNITS}


@pytest.mark.parametrize(("spec_text", "node", "unit", "news"), [
    (spec_yaml().split("flannel:")[0], "etcd01", "etcd-flannel-config.service", "flannel's network config off"),
    (spec_yaml(), "etcd02", "etcd-seed-auth.service", "auth step off on this node"),
    (spec_yaml(), "etcd03", "etcd-seed-promote.service", "promotion off"),
], ids=["flannel-removed", "no-longer-first", "join-cleared"])
def test_a_unit_turned_off_is_stopped_and_its_files_removed(tmp_path: Path, spec_text: str, node: str, unit: str,
                                                             news: str) -> None:
    root = tmp_path / "root"
    left = _put(root, UNIT[unit])
    changed, calls = _run_off_block(_script(spec_text, node), root, tmp_path)
    assert calls == [f"disable --now {unit}"]
    assert not [p for p in left if p.exists()]
    assert changed == news


def test_nothing_to_turn_off_calls_nothing(tmp_path: Path) -> None:
    """A node whose last seed ran the same units: no systemctl call (each reloads systemd) and no news."""
    changed, calls = _run_off_block(_script(spec_yaml(), "etcd02"), tmp_path / "root", tmp_path)
    assert (changed, calls) == ("", [])


def test_a_joining_node_starts_its_promotion_after_a_new_seed() -> None:
    script = _script(spec_yaml().replace("{name: etcd03, ", "{name: etcd03, join: true, "), "etcd03")
    assert '[ "$boot" = yes ] || systemctl is-active --quiet etcd-seed-promote.service || ' \
        'systemctl start --no-block etcd-seed-promote.service' in script
    assert "systemctl start --no-block etcd-seed-promote.service" not in _script(spec_yaml(), "etcd03")
