"""report.py: the seed's instance-id goes into etcd only when it is one, and on the node that applies auth only
once etcd's users, roles and grants are the seed's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from etcd_seed_node import report, transport

from tests.helpers import node_package
from tests.helpers.node_package import IN_STEP, ScriptedEtcd


@pytest.mark.parametrize("applied", ["", "etcd01-0123", "etcd01-0123456789abcdef; rm -rf /", "ETCD01-0123456789abcdef",
                                     "etcd01-0123456789abcdeg"])
def test_report_refuses_a_record_that_is_not_an_instance_id(tmp_path: Path, applied: str) -> None:
    """The report puts into etcd only a value of the shape render makes: anything else in the applied file is
    refused before etcdctl is run (it would fail: there is no etcdctl at this path)."""
    (tmp_path / "applied").write_text(applied + "\n")
    node = transport.Etcd({"name": "etcd01", "peer_url": "https://10.0.0.1:2380",
                           "client_url": "https://10.0.0.1:2379", "applied": str(tmp_path / "applied"),
                           "seed_key": "/etcd-seed/seed/etcd01", "etcdctl": str(tmp_path / "no-etcdctl"),
                           "ca": "", "cert": "", "key": ""})
    with pytest.raises(transport.Refused, match="not an instance-id"):
        report.report(node)


def test_report_without_a_record_is_refused(tmp_path: Path) -> None:
    node = transport.Etcd({"name": "etcd01", "peer_url": "https://10.0.0.1:2380",
                           "client_url": "https://10.0.0.1:2379", "applied": str(tmp_path / "none")})
    with pytest.raises(transport.Refused, match="no record of an applied seed"):
        report.report(node)


class ReportingEtcd(ScriptedEtcd):
    """The auth job's table, plus the report's own calls: the get and put of its record, and nothing else (etcd's
    AuthStatus goes through raft, and a 3.4 member in a cluster being upgraded cannot apply it)."""

    def __init__(self, answers: dict[tuple[str, ...], str], applied: Path) -> None:
        super().__init__(answers)
        applied.write_text("etcd01-0123456789abcdef\n")
        self.cfg.update({"applied": str(applied), "seed_key": "/etcd-seed/seed/etcd01"})
        self.sent: list[tuple[str, ...]] = []

    def etcdctl(self, endpoints: list[str], *args: str, timeout_s: int = 15) -> tuple[int, str, str]:
        self.sent.append(args)
        return 0, "", ""


@pytest.mark.parametrize(("answers", "reported"), [
    (IN_STEP, True),
    ({**IN_STEP, ("user", "list", "-w", "json"): json.dumps({"users": ["root", "ops"]})}, False),
    ({**IN_STEP, ("user", "get", "--", "root"): "User: root\nRoles:\n"}, False),
], ids=["in-step", "a-user-to-delete", "a-role-to-grant"])
def test_the_first_node_reports_its_seed_only_once_auth_is_as_the_seed_has_it(
        tmp_path: Path, answers: dict[tuple[str, ...], str], reported: bool) -> None:
    """On the node that applies auth, the seed runs only once etcd's users, roles and grants are as it says: before,
    the record went in as soon as etcd answered, and `status` said in step while the auth job was still failing."""
    node = ReportingEtcd(answers, tmp_path / "applied")
    if reported:
        assert report.report(node) == 0
        assert node.sent == [("get", "/etcd-seed/seed/etcd01", "--print-value-only"),
                             ("put", "/etcd-seed/seed/etcd01", "etcd01-0123456789abcdef")]
    else:
        with pytest.raises(transport.Retry, match="not yet as seed etcd01-0123456789abcdef has them"):
            report.report(node)
        assert node.sent == []
    assert not [c for c in node.calls if c[0] in ("user", "role") and c[1] not in ("list", "get")]  # only reads


def test_the_auth_node_without_its_auth_module_waits(tmp_path: Path) -> None:
    """member.json (which names auth) is put before auth.py: a report run in between waits, not a traceback."""
    node_package.install(tmp_path)
    (tmp_path / "usr/local/lib/etcd-seed/etcd_seed_node/auth.py").unlink()
    (tmp_path / "etc/etcd").mkdir(parents=True)
    (tmp_path / "applied").write_text("etcd01-0123456789abcdef\n")
    config = {"name": "etcd01", "peer_url": "https://10.0.0.1:2380", "client_url": "https://10.0.0.1:2379",
              "applied": "/applied", "seed_key": "/etcd-seed/seed/etcd01", "timeout_s": 0, "refused_pause_s": 0,
              "auth": {"enabled": True, "users": {}, "roles": {}}}
    (tmp_path / "etc/etcd/member.json").write_text(json.dumps(config))
    done = node_package.run(tmp_path, "report")
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "its auth job is not in place yet" in done.stderr
