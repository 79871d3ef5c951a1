"""The commit path: nothing secret reaches git, and a killed, concurrent or hostile run never leaves a mixed tree."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.cli import (
    SECRETS,
    build,
    git,
    run,
    run_subprocess,
    tree,
    verify,
)
from tests.helpers.specs import ROOT


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_following_the_readme_stages_no_secret(workdir: Path, tmp_path: Path) -> None:
    """In a repository laid out like this one (its .gitignore), `git add output/demo` stages no secret."""
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(ROOT / ".gitignore", repo / ".gitignore")
    shutil.copy(workdir / "cluster.yaml", repo)
    shutil.copy(workdir / "etcd.tar.gz", repo)
    code, _, err = run("build", "--spec", str(repo / "cluster.yaml"), "--out", str(repo / "output"))
    assert code == 0, err
    (repo / "output" / "demo" / "pki" / ".etcd-seed-tmp.ca.key.0123").write_text("leftover")
    git(repo, "init", "-q")
    git(repo, "add", "output/demo")
    staged = set(git(repo, "ls-files").split())
    assert "output/demo/etcd01/user-data.redacted" in staged and "output/demo/manifest.json" in staged
    assert not {f"output/demo/{s}" for s in SECRETS} & staged
    assert not [p for p in staged if ".etcd-seed-tmp." in p]


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_root_gitignore_ignores_secret_patterns(tmp_path: Path) -> None:
    """The project's own .gitignore keeps keys, full user-data, ISOs and temp files out, wherever they are."""
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(ROOT / ".gitignore", repo / ".gitignore")
    git(repo, "init", "-q")
    paths = ["output/x/pki/ca.key", "output/x/etcd01/user-data", "output/x/etcd01/seed.iso",
             "output/x/pki/.etcd-seed-tmp.ca.key.ab12", "elsewhere/prod/pki/etcd01.key"]
    done = subprocess.run(["git", "-C", str(repo), "check-ignore", *paths], capture_output=True, text=True, check=False)
    assert sorted(done.stdout.split()) == sorted(paths)


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_verify_fails_when_git_tracks_a_secret(workdir: Path) -> None:
    """A key forced into git's index is an error for verify."""
    assert build(workdir)[0] == 0
    out = workdir / "out"
    git(out, "init", "-q")
    git(out, "add", "-A")
    git(out, "add", "-f", "demo/pki/etcd01.key")
    code, _, err = verify(workdir)
    assert code == 1 and "error: pki/etcd01.key: is in git's index" in err


KILL_AT = [1, 2, 3, 4, 6, 9, 15, 25, 34, 36]


def test_a_run_killed_at_any_rename_can_be_continued(workdir: Path) -> None:
    """Killed (no cleanup at all) at the Nth rename, the next build completes and verify passes; no temp file stays."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for n in KILL_AT:
        out = workdir / f"out{n}"
        hook = ("import os, sys\nreal = os.replace\ncount = [0]\n"
                "def replace(a, b):\n    count[0] += 1\n"
                f"    if count[0] == {n}:\n        os._exit(9)\n    real(a, b)\n"
                "os.replace = replace\nfrom generator._cli import main\n"
                f"sys.exit(main(['build', '--spec', 'cluster.yaml', '--out', '{out.name}']))\n")
        killed = subprocess.run([sys.executable, "-c", hook], cwd=workdir, env=env, capture_output=True, check=False)
        assert killed.returncode in (0, 9), killed.stderr
        code, _, err = run("build", "--spec", str(workdir / "cluster.yaml"), "--out", str(out))
        assert code == 0, f"kill at rename {n}: {err}"
        code, _, err = run("verify", "--spec", str(workdir / "cluster.yaml"), "--out", str(out))
        assert code == 0, f"kill at rename {n}: {err}"
        assert not list(out.rglob(".etcd-seed-tmp.*")) and not (out / "demo" / "pki" / "pending.json").exists()


TEMP = ".etcd-seed-tmp.ca.key.0123456789ab"


@pytest.mark.parametrize("document", [
    {"renames": [["../evil", "pki/ca.key"]]},
    {"renames": [[f"pki/{TEMP}", "../../etc/passwd"]]},
    {"renames": [[f"pki/{TEMP}", "pki/etcd01.key"]]},  # the temporary name of another file
    {"renames": [], "deletes": ["manifest.json"], "sealed_moves": [], "step": None},
    {"renames": [], "deletes": [], "sealed_moves": [["etcd01.key", "ca.key"]], "step": None},
    {"renames": [], "deletes": [], "sealed_moves": [], "step": "rm -rf /"},
    {"renames": "pki/ca.key"},
], ids=lambda d: str(d)[:40])
def test_a_hostile_journal_is_refused(workdir: Path, document: dict[str, object]) -> None:
    """pki/pending.json lists the renames a killed run was making; as a file of the output tree it may be anyone's:
    a path out of the tree, another file's temporary name, or a delete the build never makes is refused, and
    nothing is moved."""
    assert build(workdir)[0] == 0
    pki = workdir / "out" / "demo" / "pki"
    (pki / TEMP).write_bytes(b"not a key")
    before = {p: p.read_bytes() for p in (workdir / "out").rglob("*") if p.is_file()}
    full = {"deletes": [], "sealed_moves": [], "step": None, **document}
    (pki / "pending.json").write_text(json.dumps(full))
    code, _, err = build(workdir)
    assert code == 1 and "error: " in err and "Traceback" not in err and "internal error" not in err, err
    after = {p: p.read_bytes() for p in (workdir / "out").rglob("*") if p.is_file()}
    assert {k: v for k, v in after.items() if k.name != "pending.json"} == \
        {k: v for k, v in before.items() if k.name != "pending.json"}


def test_a_journalled_link_is_not_followed(workdir: Path) -> None:
    """A temporary name the journal lists that is a link (to a file of the attacker's choosing) is not put in place."""
    assert build(workdir)[0] == 0
    pki = workdir / "out" / "demo" / "pki"
    (pki / TEMP).symlink_to("/etc/hostname")
    (pki / "pending.json").write_text(json.dumps({"renames": [[f"pki/{TEMP}", "pki/ca.key"]], "deletes": [],
                                                  "sealed_moves": [], "step": None}))
    key = (pki / "ca.key").read_bytes()
    code, _, err = build(workdir)
    assert code == 1 and f"pki/{TEMP}: not a regular file; refusing to put it in place" in err, err
    assert (pki / "ca.key").read_bytes() == key


def test_stale_temp_files_are_removed_and_flagged(workdir: Path) -> None:
    """A temp file a killed run left behind fails verify until the next build removes it."""
    assert build(workdir)[0] == 0
    leftover = workdir / "out" / "demo" / "pki" / ".etcd-seed-tmp.etcd01.key.abcdef"
    leftover.write_bytes((workdir / "out" / "demo" / "pki" / "etcd01.key").read_bytes())
    code, _, err = verify(workdir)
    assert code == 1 and "error: pki/.etcd-seed-tmp.etcd01.key.abcdef: left by a run that was killed" in err
    code, out, _ = build(workdir)
    assert code == 0 and "removed pki/.etcd-seed-tmp.etcd01.key.abcdef" in out and not leftover.exists()


def test_a_second_build_is_refused_while_one_runs(workdir: Path) -> None:
    """While a build holds the cluster's lock, another exits 1 with a clear message and writes nothing."""
    assert build(workdir)[0] == 0
    root = workdir / "out" / "demo"
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        code, _, err = build(workdir)
        assert code == 1 and "another etcd-seed run is using this directory" in err
    finally:
        os.close(fd)


def test_concurrent_builds_never_mix_two_cas(workdir: Path) -> None:
    """Two builds started together on an empty --out leave one consistent tree."""
    for attempt in range(3):
        out = f"race{attempt}"
        procs = [subprocess.Popen([sys.executable, "-m", "generator", "build", "--spec", "cluster.yaml", "--out", out],
                                  cwd=workdir, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
        results = [p.communicate(timeout=120) for p in procs]
        codes = sorted(p.returncode for p in procs)
        assert codes in ([0, 0], [0, 1]), results
        code, _, err = run("verify", "--spec", str(workdir / "cluster.yaml"), "--out", str(workdir / out))
        assert code == 0, err


def test_umask_000_still_gives_private_modes(workdir: Path) -> None:
    """Directories get explicit modes: no world-writable output even under umask 000."""
    old = os.umask(0)
    try:
        assert build(workdir)[0] == 0
    finally:
        os.umask(old)
    root = workdir / "out" / "demo"
    modes = {p.relative_to(root).as_posix(): p.stat().st_mode & 0o777 for p in [root, *root.rglob("*")]}
    assert modes["pki"] == 0o700 and modes["."] == 0o755 and modes["etcd01"] == 0o755
    assert not [p for p, m in modes.items() if m & 0o022]
    assert tree(root) == {p: m for p, m in tree(root).items()}  # files keep their declared 0600/0644
    assert all(m == 0o600 for p, m in tree(root).items() if p in SECRETS)


@pytest.mark.parametrize(("target", "damage", "expected"), [
    ("manifest.json", lambda d: d["files"].update({"pki/ca.crt": "x"}), "manifest.json: files.pki/ca.crt: must be"),
    ("manifest.json", lambda d: d["files"]["pki/ca.crt"].update({"sha256": ["x"]}),
     "manifest.json: files.pki/ca.crt.sha256"),
    ("manifest.json", lambda d: d.update({"files": []}), "manifest.json: files: must be an object"),
    ("pki/sealed.json", lambda d: d.update({"etcd01.key": {"key_sha256": 5}}),
     "pki/sealed.json: etcd01.key.key_sha256"),
], ids=["entry-not-object", "sha-not-string", "files-not-object", "sealed-entry"])
def test_malformed_state_files_get_an_error_line(workdir: Path, target: str, damage: object, expected: str) -> None:
    """Damaged manifest or sealed.json entries are named, not a crash."""
    assert build(workdir)[0] == 0
    root = workdir / "out" / "demo"
    path = root / target
    document = json.loads(path.read_text()) if path.exists() else {}
    damage(document)  # type: ignore[operator]
    path.write_text(json.dumps(document))
    command = ["seal", "--recipient", "age1" + "q" * 58] if target.endswith("sealed.json") else ["build"]
    done = run_subprocess(workdir, *command, "--spec", "cluster.yaml", "--out", "out")
    assert done.returncode == 1 and f"error: {expected}" in done.stderr, done.stderr
    assert "internal error" not in done.stderr
