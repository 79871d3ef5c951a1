"""auth.py: the calls that bring etcd's users, roles and grants to the seed's, and what the job logs of them (the
real-etcd cases are in tests/etcd/test_auth.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from etcd_seed_node import auth

from tests.helpers import node_package
from tests.helpers.node_package import IN_STEP, ScriptedEtcd


def test_auth_step_names_a_hostile_user_on_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    evil = "evil\netcd-seed: auth: on; 1 users and 0 roles in step"
    etcd = ScriptedEtcd({**IN_STEP, ("user", "list", "-w", "json"): json.dumps({"users": ["root", evil]})})
    assert auth.auth(etcd) == 0
    assert ("user", "delete", "--", evil) in etcd.calls
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("etcd-seed: auth: on; 1 users and 0 roles in step (user 'evil\\n")


def test_auth_step_without_auth_in_its_config_does_nothing(tmp_path: Path) -> None:
    """A node that is no longer the spec's first keeps no auth in member.json: the job says so and succeeds, rather
    than fail and be restarted by systemd for ever (it never calls etcdctl: the path below does not exist)."""
    node_package.install(tmp_path)
    (tmp_path / "etc/etcd").mkdir(parents=True)
    config = {"name": "etcd02", "peer_url": "https://10.0.0.2:2380", "client_url": "https://10.0.0.2:2379",
              "etcdctl": "/nonexistent/etcdctl", "ca": "/x", "cert": "/x", "key": "/x", "timeout_s": 5,
              "refused_pause_s": 0}
    (tmp_path / "etc/etcd/member.json").write_text(json.dumps(config))
    done = node_package.run(tmp_path, "auth")
    assert done.returncode == 0, done.stderr
    assert done.stderr == "etcd-seed: auth: this node's seed leaves etcd's users and roles to the spec's first node\n"
