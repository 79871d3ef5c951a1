"""The fast path: a build or plan with nothing to do replays the last full run's output, and falls back
to the full run whenever anything it read may have changed."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509

import generator
from generator import _cli, fastpath, render
from tests.helpers.cli import build, run
from tests.helpers.specs import ROOT, fake_bundle


@pytest.fixture
def taken(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Records, for each run, whether it answered from the fast path."""
    seen: list[bool] = []
    real = _cli._fast

    def spy(args: object) -> fastpath.Replay | None:
        replay = real(args)  # type: ignore[arg-type]
        seen.append(replay is not None)
        return replay

    monkeypatch.setattr(_cli, "_fast", spy)
    return seen


@pytest.fixture
def recorded(workdir: Path, taken: list[bool]) -> Path:
    """A tree built, then built again with nothing to do: the second run recorded itself."""
    assert build(workdir)[0] == 0
    assert build(workdir)[0] == 0
    assert (workdir / "out/demo" / fastpath.NAME).exists()
    assert build(workdir)[0] == 0
    assert taken == [False, False, True]
    taken.clear()
    return workdir


def plan(workdir: Path) -> tuple[int, str, str]:
    return run("plan", "--spec", str(workdir / "cluster.yaml"), "--out", str(workdir / "out"))


def test_replay_is_what_the_full_run_printed(workdir: Path, taken: list[bool]) -> None:
    assert build(workdir)[0] == 0
    full = build(workdir)
    fast = build(workdir)
    assert taken == [False, False, True]
    assert fast == full and "0 of 39 files written (nothing changed)" in fast[1]
    fast_plan = plan(workdir)
    (workdir / "out/demo" / fastpath.NAME).unlink()
    full_plan = plan(workdir)
    assert taken[3:] == [True, False]
    assert fast_plan == full_plan and "0 to create, 0 to update, 0 to chmod, 38 unchanged" in full_plan[1]


def test_fast_run_imports_no_heavy_module(recorded: Path) -> None:
    """The replay needs neither cryptography, Jinja, PyYAML nor pycdlib."""
    program = ("import json, sys; from generator._cli import main; code = main(sys.argv[1:]); "
               "print(json.dumps([code, sorted(m for m in ('cryptography', 'jinja2', 'yaml', 'pycdlib') "
               "if m in sys.modules)]))")
    done = subprocess.run([sys.executable, "-c", program, "build", "--spec", str(recorded / "cluster.yaml"),
                           "--out", str(recorded / "out")], capture_output=True, text=True, cwd=ROOT, check=True)
    assert json.loads(done.stdout.splitlines()[-1]) == [0, []]
    assert "(nothing changed)" in done.stdout


def test_changed_template_falls_back(workdir: Path, taken: list[bool], tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    templates = tmp_path / "templates"
    shutil.copytree(ROOT / "templates", templates)
    monkeypatch.setattr(fastpath, "_TEMPLATE_DIRS", (templates,))
    monkeypatch.setattr(render, "_TEMPLATE_DIRS", [templates])
    for _ in range(3):
        assert build(workdir)[0] == 0
    assert taken == [False, False, True]
    unit = templates / "etcd.service.j2"
    unit.write_text(unit.read_text().replace("LimitNOFILE=40000", "LimitNOFILE=65536"))
    code, out, _ = build(workdir)
    assert taken[3] is False and code == 0 and "(nothing changed)" not in out
    assert "LimitNOFILE=65536" in (workdir / "out/demo/etcd01/etcd.service").read_text()


def test_changed_key_file_falls_back(recorded: Path, taken: list[bool]) -> None:
    """Another key in pki/: the full run looks, and refuses it; a replay would have said all is well."""
    shutil.copy(recorded / "out/demo/pki/etcd02.key", recorded / "out/demo/pki/etcd01.key")
    code, _, err = build(recorded)
    assert taken == [False] and code == 1 and "pki/etcd01.key" in err


def test_touched_iso_falls_back(recorded: Path, taken: list[bool]) -> None:
    iso = recorded / "out/demo/etcd03/seed.iso"
    os.utime(iso, ns=(iso.stat().st_atime_ns, iso.stat().st_mtime_ns + 1_000_000_000))
    code, out, _ = build(recorded)
    assert taken == [False] and code == 0 and "(nothing changed)" in out
    assert build(recorded)[0] == 0 and taken == [False, True]  # recorded again


def test_rewritten_iso_falls_back_and_is_rebuilt(recorded: Path, taken: list[bool]) -> None:
    iso = recorded / "out/demo/etcd03/seed.iso"
    data = bytearray(iso.read_bytes())
    data[40000] ^= 1
    stat = iso.stat()
    iso.write_bytes(bytes(data))
    os.utime(iso, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size and mtime: only its ctime moved
    code, out, _ = build(recorded)
    assert taken == [False] and code == 0 and "1 of 39 files written" in out
    assert iso.read_bytes() != bytes(data)


def test_changed_bundle_falls_back(recorded: Path, taken: list[bool]) -> None:
    os.utime(recorded / "etcd.tar.gz", ns=(1, 1))  # same bytes, another mtime
    code, out, _ = build(recorded)
    assert taken == [False] and code == 0 and "(nothing changed)" in out
    (recorded / "etcd.tar.gz").write_bytes(fake_bundle(version="3.5.1") + b"\0")  # other bytes: a new sha256
    code, out, _ = build(recorded)
    assert taken[1] is False and code == 0 and "13 of 39 files written" in out  # each seed, and the manifest


def test_changed_tool_version_falls_back(recorded: Path, taken: list[bool], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(generator, "__version__", "99.0.0")
    assert build(recorded)[0] == 0 and taken == [False]


def test_changed_spec_or_epoch_or_flag_falls_back(recorded: Path, taken: list[bool],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    assert run("build", "--renew", "--spec", str(recorded / "cluster.yaml"), "--out", str(recorded / "out"))[0] == 0
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    assert build(recorded)[0] == 0
    monkeypatch.delenv("SOURCE_DATE_EPOCH")
    spec = recorded / "cluster.yaml"
    spec.write_text(spec.read_text().replace("heartbeat_interval: 100", "heartbeat_interval: 120"))
    code, out, _ = build(recorded)
    assert code == 0 and "(nothing changed)" not in out
    assert taken == [False, False, False]


def test_stray_or_temporary_file_falls_back(recorded: Path, taken: list[bool]) -> None:
    (recorded / "out/demo/pki/.etcd-seed-tmp.etcd01.key.abc").write_text("left by a killed run")
    code, out, _ = build(recorded)
    assert taken == [False] and code == 0 and "removed pki/.etcd-seed-tmp.etcd01.key.abc" in out


def test_approaching_expiry_falls_back(recorded: Path) -> None:
    """The record holds the first moment a certificate comes within renew_before_days of expiry."""
    record = json.loads((recorded / "out/demo" / fastpath.NAME).read_text())
    certs = [x509.load_pem_x509_certificates(p.read_bytes())[0] for p in (recorded / "out/demo/pki").glob("*.crt")]
    first = min(c.not_valid_after_utc for c in certs) - dt.timedelta(days=30)
    assert record["renew_at"] == first.timestamp()
    args = [str((recorded / "out").resolve())]
    spec, out = recorded / "cluster.yaml", recorded / "out"
    assert fastpath.lookup("build", args, spec, out, first.timestamp() - 1) is not None
    assert fastpath.lookup("build", args, spec, out, first.timestamp()) is None


def test_repointed_link_falls_back(recorded: Path, taken: list[bool]) -> None:
    """The spec names the bundle through a link; pointed at another tarball (same size, same mtime), the record's
    input is no longer what the link leads to, so the full run builds new seeds."""
    bundles = recorded / "bundles"
    bundles.mkdir()
    first, second = bundles / "a.tar.gz", bundles / "b.tar.gz"
    first.write_bytes((recorded / "etcd.tar.gz").read_bytes())
    data = bytearray(first.read_bytes())
    data[-1] ^= 1
    second.write_bytes(bytes(data))
    os.utime(second, ns=(first.stat().st_atime_ns, first.stat().st_mtime_ns))
    (recorded / "etcd.tar.gz").unlink()
    (recorded / "etcd.tar.gz").symlink_to(first)
    assert build(recorded)[0] == 0 and build(recorded)[0] == 0 and build(recorded)[0] == 0
    assert taken[-1] is True  # recorded through the link
    (recorded / "etcd.tar.gz").unlink()
    (recorded / "etcd.tar.gz").symlink_to(second)
    code, out, _ = build(recorded)
    assert taken[-1] is False and code == 0 and "(nothing changed)" not in out


def test_moved_tree_is_not_answered_from_its_record(recorded: Path, taken: list[bool]) -> None:
    """The tree moved away: its record must not answer for a tree that is no longer there."""
    (recorded / "out/demo").rename(recorded / "out/demo.bak")
    code, out, _ = build(recorded)
    assert taken == [False] and code == 0 and "39 of 39 files written" in out
    assert (recorded / "out/demo/manifest.json").exists()


def test_changed_directory_mode_falls_back_and_is_repaired(recorded: Path, taken: list[bool]) -> None:
    pki = recorded / "out/demo/pki"
    pki.chmod(0o777)
    code, _, _ = build(recorded)
    assert taken == [False] and code == 0
    assert pki.stat().st_mode & 0o777 == 0o700


@pytest.mark.parametrize("hostile", ["nesting", "fifo", "zero", "huge"])
def test_a_hostile_record_is_ignored(recorded: Path, taken: list[bool], hostile: str) -> None:
    """The record is a file in the output tree: deep nesting, a FIFO, a link to /dev/zero or a huge file makes
    the run fall through to the full build, which neither hangs nor fails."""
    path = recorded / "out/demo" / fastpath.NAME
    path.unlink()
    if hostile == "nesting":
        path.write_text("[" * 200_000)
    elif hostile == "fifo":
        os.mkfifo(path)
    elif hostile == "zero":
        path.symlink_to("/dev/zero")
    else:
        with open(path, "wb") as handle:
            handle.truncate(fastpath.MAX_RECORD + 1)
    done = subprocess.run([sys.executable, "-m", "generator", "build", "--spec", str(recorded / "cluster.yaml"),
                           "--out", str(recorded / "out")], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert "(nothing changed)" in done.stdout


def test_library_versions_are_inputs(monkeypatch: pytest.MonkeyPatch) -> None:
    """A new cryptography, Jinja2, pycdlib or PyYAML may write other bytes: each version is in the digest."""
    from importlib import metadata

    before = fastpath._code_digest()
    real = metadata.version
    monkeypatch.setattr(metadata, "version", lambda name: "0.0.1" if name == "pycdlib" else real(name))
    assert fastpath._code_digest() != before
