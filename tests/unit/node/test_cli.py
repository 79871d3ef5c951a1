"""cli.py and each job's META: the launcher runs only a job this node has, by its META's retry policy, and the
seed's table of units (generator/node.py UNITS) stages each job module with the unit its META names."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
from etcd_seed_node import cli, transport

from generator import node as node_facts
from generator.decisions import Decisions, decide
from generator.loader import load_spec
from generator.paths import PATHS
from generator.spec import Spec
from tests.helpers import node_package
from tests.helpers.specs import ROOT, spec_yaml

JOBS = ["auth", "clock", "defrag", "prepare", "promote", "report"]


# What no job can run on: not JSON, not an object, a mistyped timeout; and what each job but auth cannot (auth
# without "auth" in member.json says another node applies it, and succeeds).
BROKEN = ["", "{", "[]", '{"name": "etcd01", "timeout_s": "soon"}']
LACKING = ['{"name": "etcd01", "timeout_s": 0, "refused_pause_s": 0, "clock_wait_s": "x"}',
           '{"timeout_s": 0, "refused_pause_s": 0}']


@pytest.mark.parametrize(("job", "config"), [(job, c) for job in JOBS for c in BROKEN]
                         + [(job, c) for job in JOBS if job != "auth" for c in LACKING])
def test_a_broken_config_is_an_error_line_not_a_traceback(tmp_path: Path, config: str, job: str) -> None:
    """Every job, on a member.json that is not JSON, not an object, or lacks or mistypes what the job reads: one
    ERROR line (the clock job's used to be a traceback when clock_wait_s was missing or not a number)."""
    node_package.install(tmp_path)
    (tmp_path / "etc/etcd").mkdir(parents=True)
    (tmp_path / "etc/etcd/member.json").write_text(config)
    done = node_package.run(tmp_path, job)
    assert done.returncode == 1
    assert done.stderr.startswith("etcd-seed: ERROR: ") and "Traceback" not in done.stderr, done.stderr
    assert len(done.stderr.splitlines()) == 1, done.stderr


def test_the_clock_job_needs_only_its_bound(tmp_path: Path) -> None:
    node_package.install(tmp_path)
    (tmp_path / "etc/etcd").mkdir(parents=True)
    (tmp_path / "etc/etcd/member.json").write_text('{"clock_wait_s": 0}')
    done = node_package.run(tmp_path, "clock")
    assert done.returncode == 0 and done.stderr == \
        "etcd-seed: clock: no time servers in the seed (network.ntp); not waiting\n", done.stderr


def test_only_source_files_are_jobs(tmp_path: Path) -> None:
    """A compiled file or a directory left in the package is no job: only the modules a seed stages run."""
    node_package.install(tmp_path)
    where = tmp_path / "usr/local/lib/etcd-seed/etcd_seed_node"
    (where / "defrag.py").rename(where / "defrag.pyc")
    (where / "stray").mkdir()
    done = node_package.run(tmp_path, "defrag")
    assert done.returncode == 2 and done.stderr == "usage: etcd-seed-member.py auth|clock|prepare|promote|report\n"


def test_every_job_declares_its_meta() -> None:
    assert cli.jobs() == JOBS
    for job in JOBS:
        meta = cli.meta(job)
        assert meta is not None and meta.job == job, job
        assert meta.retry in (transport.UNTIL_DEADLINE, transport.ONCE, transport.BOUNDED), job


@pytest.mark.parametrize("job", ["transport", "cli", "../auth", "Auth", "auth ", "", "nosuch"])
def test_only_a_job_runs(tmp_path: Path, job: str) -> None:
    node_package.install(tmp_path)
    done = node_package.run(tmp_path, job)
    assert done.returncode == 2 and done.stderr == f"usage: etcd-seed-member.py {'|'.join(JOBS)}\n", done.stderr


def test_a_job_this_node_was_not_given_does_not_run(tmp_path: Path) -> None:
    """A node gets only its units' modules: without auth.py there is no auth job, and the usage says which are."""
    node_package.install(tmp_path)
    (tmp_path / "usr/local/lib/etcd-seed/etcd_seed_node/auth.py").unlink()
    done = node_package.run(tmp_path, "auth")
    assert done.returncode == 2 and done.stderr == "usage: etcd-seed-member.py clock|defrag|prepare|promote|report\n"


def _spec(extra: str = "") -> Spec:
    spec, _ = load_spec(spec_yaml() + extra, base_dir=ROOT)
    return spec


def test_each_job_module_is_staged_with_the_unit_its_meta_names() -> None:
    """The seed's table and the modules agree: a job's module belongs to the unit that runs it, and every unit
    template that runs `etcd-seed-member JOB` is that job's unit."""
    staged_with = {f.source: unit for unit in node_facts.UNITS for f in unit.files}
    for job in JOBS:
        meta = importlib.import_module(f"etcd_seed_node.{job}").META
        unit = staged_with[f"etcd_seed_node/{job}.py"]
        runs = meta.unit if meta.unit == "etcd.service" else meta.unit.removesuffix(".service") + ".timer"
        assert unit.name in (meta.unit, runs), (job, unit.name, meta.unit)
        template = next(f.source for f in unit.files if f.dest.endswith("/" + meta.unit))
        command = f"{{{{ paths.member_bin }}}} {job}"
        assert command in (ROOT / "templates" / template).read_text(), (job, template)
    core = {f.source for f in node_facts.CORE_FILES}
    assert {p.name for p in node_package.PACKAGE.glob("*.py")} == \
        {s.removeprefix("etcd_seed_node/") for s in [*core, *staged_with] if s.startswith("etcd_seed_node/")}


def _modules(spec: Spec, decided: Decisions) -> dict[str, set[str]]:
    return {node.name: {f.dest.rsplit("/", 1)[1] for f in node_facts.STAGED_FILES
                        if f.source.startswith("etcd_seed_node/") and f.when(spec, decided, node)}
            for node in spec.nodes}


def test_a_node_gets_only_the_modules_of_its_units() -> None:
    """The spec's first node applies auth; a joining node promotes itself; defrag is on every node or none."""
    spec = _spec()
    modules = _modules(spec, decide(spec))
    every = {"__init__.py", "transport.py", "cli.py", "prepare.py", "report.py", "clock.py"}
    assert modules["etcd02"] == every | ({"defrag.py"} if spec.defrag.enabled else set())
    assert "auth.py" in modules["etcd01"]
    # A cluster built before auth was managed, whose spec does not set auth.enabled: no node applies auth.
    assert not any("auth.py" in found for found in _modules(spec, decide(spec, True, None)).values())
    assert not any("promote.py" in found for found in modules.values())  # no node joins in this spec


def test_the_launcher_is_put_after_every_module_of_its_package() -> None:
    """An install stopped half-way must not leave a new launcher without its modules: etcd's ExecStartPre runs it."""
    order = [f.dest for f in node_facts.STAGED_FILES]
    assert order[-1] == PATHS.member_bin
    assert all(order.index(f.dest) < len(order) - 1 for f in node_facts.STAGED_FILES if f.source.startswith(
        "etcd_seed_node/"))


def test_member_json_holds_what_the_jobs_read() -> None:
    spec = _spec()
    config = json.loads(json.dumps(node_facts.member_config(spec, decide(spec), spec.nodes[2])))
    etcd = transport.Etcd(config)
    assert etcd.name == "etcd03" and etcd.peer_url == "https://192.168.0.3:2380"
    assert {"timeout_s", "refused_pause_s", "clock_wait_s", "peers", "mode", "data_dir", "wal_dir"} <= set(config)
