"""`status` refuses, with one error line naming what is wrong, before it asks any node: a tree that was never
built, a missing admin key, a timeout out of range. (Asking nodes is in tests/etcd/test_status.py, inside
network namespaces: the example's addresses are not to be dialled from here.)"""

from __future__ import annotations

from pathlib import Path

from tests.helpers.cli import build, run


def _status(workdir: Path, *extra: str) -> tuple[int, str, str]:
    return run("status", "--spec", str(workdir / "cluster.yaml"), "--out", str(workdir / "out"), *extra)


def test_status_before_any_build_names_the_missing_file(workdir: Path) -> None:
    code, out, err = _status(workdir)
    assert code == 1 and out == ""
    assert err.splitlines() == [f"error: {workdir}/out/demo/pki/ca.crt: missing; status compares the cluster with "
                                "the build's tree: run the build first, or pass the --spec and --out it used"]


def test_status_without_the_admin_key_says_so(workdir: Path) -> None:
    assert build(workdir)[0] == 0
    (workdir / "out/demo/pki/admin.key").unlink()
    code, _, err = _status(workdir)
    assert code == 1 and err.startswith(f"error: {workdir}/out/demo/pki/admin.key: missing;"), err


def test_status_timeout_out_of_range_is_refused(workdir: Path) -> None:
    for value in ("0", "-1", "301", "nan"):
        code, _, err = _status(workdir, "--timeout", value)
        assert code == 1 and err == "error: --timeout: must be more than 0 and at most 300 seconds\n", (value, err)
