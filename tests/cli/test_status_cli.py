"""`status` refuses, with one error line naming what is wrong, before it asks any node: a tree that was never
built, a missing admin key, a timeout out of range. (Asking nodes is in tests/etcd/test_status.py, inside
network namespaces: the example's addresses are not to be dialled from here.)"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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


@pytest.mark.parametrize("name", ["etcd02.crt", "ca.crt", "admin.key"])
@pytest.mark.parametrize("kind", ["fifo", "huge"])
def test_status_refuses_a_tree_file_it_cannot_read_safely(workdir: Path, name: str, kind: str) -> None:
    """A FIFO, or a (sparse) file of 8 GiB, in place of a tree file: status names it at once, before it asks any
    node, instead of hanging or reading it whole."""
    assert build(workdir)[0] == 0
    path = workdir / "out/demo/pki" / name
    path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    else:
        with path.open("wb") as handle:
            handle.truncate(8 << 30)
    code, _, err = _status(workdir)
    assert code == 1 and err.startswith("error: ") and name in err.splitlines()[0], err
    if kind == "huge":
        assert "cannot read" not in err, err  # refused by its size, not read and then found unparsable


def test_status_timeout_out_of_range_is_refused(workdir: Path) -> None:
    for value in ("0", "-1", "301", "nan"):
        code, _, err = _status(workdir, "--timeout", value)
        assert code == 1 and err == "error: --timeout: must be more than 0 and at most 300 seconds\n", (value, err)


def test_what_members_answer_cannot_forge_a_line(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A member's answers (its name in /members, its version label) reach the terminal one line each: a line break
    in them is shown escaped, never as a line of its own. The network is replaced here because this test's nodes
    are the example's addresses, which are not to be dialled; the rows come from status.assess as they would."""
    from generator import status
    from tests.helpers.specs import parse, spec_yaml

    spec = parse(spec_yaml())
    hostile = [{"id": 1, "name": "evil\nhealthy and in step with the build", "peerURLs": ["https://1.2.3.4:2380"]}]
    answers = [status.Answer(n.name, metrics=status.parse_metrics('etcd_server_version{server_version="3.5.1"} 1\n'),
                             health={"health": "true"}, members=hostile) for n in spec.nodes]
    monkeypatch.setattr(status, "check", lambda *a: status.assess(spec, {n.name: "0" * 64 for n in spec.nodes}, {},
                                                                  answers, None))
    code, out, _ = _status(workdir)
    assert code == 1
    assert "problem: member evil\\nhealthy and in step with the build (1) at https://1.2.3.4:2380 is not in the " \
           "spec; remove it (docs/operations.md)" in out.splitlines()
    assert "healthy and in step with the build" not in out.splitlines()


@pytest.mark.parametrize("content", [
    "fifo", "huge", 'instance-id: "etcd02-0123"\n', 'instance-id: "etcd02-0123456789abcdef\\nx"\n',
    'instance-id: "../../etc-0123456789abcdef"\n', "local-hostname: etcd02\n"])
def test_status_refuses_a_meta_data_without_an_instance_id(workdir: Path, content: str) -> None:
    """status compares each node's record with the instance-id in its meta-data: a meta-data that holds none of the
    build's shape (or is a FIFO, or 8 GiB) is named in one error line before any node is asked."""
    assert build(workdir)[0] == 0
    path = workdir / "out/demo/etcd02/meta-data"
    path.unlink()
    if content == "fifo":
        os.mkfifo(path)
    elif content == "huge":
        with path.open("wb") as handle:
            handle.truncate(8 << 30)
    else:
        path.write_text(content)
    code, out, err = _status(workdir)
    assert code == 1 and out == "" and len(err.splitlines()) == 1, err
    assert err.startswith("error: ") and "etcd02/meta-data" in err, err
