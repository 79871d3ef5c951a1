"""What wrote the tree: re-runs on the installed libraries, manifest.json's written_with, and what verify and plan
say when the libraries changed since."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from generator import provenance
from tests.helpers.cli import build, run, run_subprocess, set_spec, verify


def _plan(workdir: Path) -> tuple[int, str, str]:
    return run("plan", "--spec", str(workdir / "cluster.yaml"), "--out", str(workdir / "out"))


def run_env(workdir: Path, env: dict[str, str]) -> tuple[int, str, str]:
    """plan with extra environment variables, in a process of its own."""
    done = run_subprocess(workdir, "plan", "--spec", "cluster.yaml", "--out", "out", env=env)
    return done.returncode, done.stdout, done.stderr


def _pretend_written_with(workdir: Path, **versions: str) -> bytes:
    """Make the manifest say other versions wrote the tree, as an older lock would have; its bytes after."""
    path = workdir / "out" / "demo" / "manifest.json"
    document = json.loads(path.read_bytes())
    document["written_with"]["versions"].update(versions)
    path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    return path.read_bytes()


def test_build_rebuild_plan_and_verify_run_on_the_installed_libraries(workdir: Path) -> None:
    """Every day-2 path checks the certificates it reuses: the second build, plan and verify all succeed
    (with cryptography 51 each one was an internal error)."""
    assert build(workdir)[0] == 0
    for code, _, err in (build(workdir), _plan(workdir), verify(workdir)):
        assert (code, "internal error" in err) == (0, False), err
    assert "(nothing changed)" in build(workdir)[1]


def test_the_manifest_records_the_spec_and_versions_that_wrote_it(workdir: Path) -> None:
    assert build(workdir)[0] == 0
    document = json.loads((workdir / "out" / "demo" / "manifest.json").read_bytes())
    assert document["written_with"] == {
        "spec_sha256": hashlib.sha256((workdir / "cluster.yaml").read_bytes()).hexdigest(),
        "versions": provenance.installed()}
    assert set(provenance.LIBRARIES) | {"etcd-seed", "python"} == set(document["written_with"]["versions"])
    assert "none" not in document["written_with"]["versions"].values()


def test_a_library_update_that_changes_no_byte_leaves_the_manifest_as_committed(workdir: Path) -> None:
    """The record is of what wrote the files: a build that writes none keeps it, so a committed tree does not
    change with every lock update."""
    assert build(workdir)[0] == 0
    before = _pretend_written_with(workdir, cryptography="50.0.2")
    code, out, _ = build(workdir)
    assert code == 0 and "(nothing changed)" in out
    assert (workdir / "out" / "demo" / "manifest.json").read_bytes() == before


def test_verify_says_when_other_versions_wrote_the_tree(workdir: Path) -> None:
    assert build(workdir)[0] == 0
    code, _, err = verify(workdir)
    assert code == 0 and "other versions" not in err, err
    _pretend_written_with(workdir, cryptography="50.0.2", jinja2="3.0.0")
    code, _, err = verify(workdir)
    installed = provenance.installed()
    assert code == 0, err
    assert (f"warning: manifest.json: the tree was last written with other versions than the ones installed "
            f"(cryptography 50.0.2 -> {installed['cryptography']}, jinja2 3.0.0 -> {installed['jinja2']})") in err


def test_plan_names_a_change_that_only_a_library_update_explains(workdir: Path) -> None:
    """A file whose bytes differ while the spec, etcd-seed, the bundle and the PKI are as recorded was written
    by the old library: an older Jinja2 cannot be installed inside this test, so the test plays its output by
    changing a rendered file, and plan must put the change down to the update alone."""
    assert build(workdir)[0] == 0
    _pretend_written_with(workdir, jinja2="3.0.0")
    service = workdir / "out" / "demo" / "etcd01" / "etcd.service"
    # A hand edit is not the library's: the note may not claim it.
    service.write_bytes(service.read_bytes() + b"\n")
    code, out, _ = _plan(workdir)
    assert code == 0 and "some of the changes above may come from it" in out and "update alone" not in out, out
    # What the old library wrote is what the manifest recorded.
    path = workdir / "out" / "demo" / "manifest.json"
    document = json.loads(path.read_bytes())
    document["files"]["etcd01/etcd.service"].update(sha256=hashlib.sha256(service.read_bytes()).hexdigest(),
                                                    size=len(service.read_bytes()))
    path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    code, out, _ = _plan(workdir)
    assert code == 0
    assert "etcd01/etcd.service  update" in out
    assert (f"library update since this tree was last written: jinja2 3.0.0 -> {provenance.installed()['jinja2']}; "
            "the spec, etcd-seed, the bundle and every key and certificate are unchanged, so every change above "
            "comes from that update alone") in out
    # Other ISO dates (SOURCE_DATE_EPOCH) change the seeds: not the library's doing either.
    code, out, _ = run_env(workdir, {"SOURCE_DATE_EPOCH": "1700000000"})
    assert code == 0 and re.search(r"seed\.iso +update", out) and "update alone" not in out, out
    # With the spec changed too, the update is named but not given every change.
    set_spec(workdir, "heartbeat_interval: 100", "heartbeat_interval: 150")
    code, out, _ = _plan(workdir)
    assert code == 0 and "some of the changes above may come from it" in out and "update alone" not in out
    # The build writes the new record, and the next plan has nothing to say of libraries.
    assert build(workdir)[0] == 0
    assert "library update" not in _plan(workdir)[1]


@pytest.mark.parametrize(("record", "field"), [
    ("not an object", "written_with"),
    ({"spec_sha256": "ab", "versions": {}}, "written_with.spec_sha256"),
    ({"spec_sha256": "0" * 64, "versions": {"cryptography": "51\nwarning: forged"}}, "written_with.versions"),
    ({"spec_sha256": "0" * 64, "versions": {"Crypto\u202e": "1"}}, "written_with.versions"),
    ({"spec_sha256": "0" * 64, "versions": ["cryptography"]}, "written_with.versions"),
])
def test_a_malformed_record_is_an_error_naming_its_field(workdir: Path, record: object, field: str) -> None:
    assert build(workdir)[0] == 0
    path = workdir / "out" / "demo" / "manifest.json"
    document = json.loads(path.read_bytes())
    document["written_with"] = record
    path.write_text(json.dumps(document))
    code, _, err = build(workdir)
    assert code == 1 and err.startswith(f"error: manifest.json: {field}"), err
    assert not any(line.startswith("warning: forged") for line in err.splitlines()), err
