"""transport.py: etcd's answers checked against the shapes the spec allows, before any job acts on them.

prepare writes membership.env from `member list` and `member add`; systemd reads that file after options.env,
so a name or URL that etcd hands over must never carry a line or a setting of its own. Real etcd cannot be made
to list a member name with a newline in it, so these answers are written here; the real-etcd cases (a foreign
peer URL, a member of another name) are in tests/etcd/test_membership.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from etcd_seed_node import transport

GOOD = {"ID": 0x1234, "name": "etcd01", "peerURLs": ["https://10.0.0.1:2380"], "clientURLs": []}


@pytest.mark.parametrize("bad", [
    {"name": "etcd01\nETCD_DATA_DIR=/tmp"},
    {"name": "ETCD01"},
    {"name": "etcd01 "},
    {"name": 7},
    {"peerURLs": ["https://10.0.0.1:2380\nETCD_X=1"]},
    {"peerURLs": ["http://10.0.0.1:2380"]},
    {"peerURLs": ["https://node.example:2380"]},
    {"peerURLs": ["https://[::1]:2380"]},
    {"peerURLs": ["https://10.0.0.256:2380"]},
    {"peerURLs": ["https://10.0.0.1:2380,evil=https://10.0.0.9:2380"]},
    {"peerURLs": []},
    {"peerURLs": "https://10.0.0.1:2380"},
    {"ID": "1234"},
    {"ID": True},
], ids=lambda v: repr(v)[:40])
def test_member_of_another_shape_is_refused(bad: dict[str, object]) -> None:
    with pytest.raises(transport.Refused):
        transport.checked_members({"members": [GOOD, {**GOOD, "ID": 0x99, **bad}]}, "member list")


@pytest.mark.parametrize("text", ["", "not json", "[]", "{}", '{"members": 3}', '"x"', "null"])
def test_unparsable_answers_are_refused(text: str) -> None:
    with pytest.raises(transport.Refused):
        transport.checked_members(transport.parse_json(text, "member list"), "member list")


def test_an_etcdctl_that_cannot_run_is_a_failed_call(tmp_path: Path) -> None:
    """A missing or damaged etcdctl (a power cut before the install step put it back) fails the call, which the
    job reports on one line; it used to end the job in a traceback."""
    etcd = transport.Etcd({"name": "etcd01", "peer_url": "https://10.0.0.1:2380",
                           "client_url": "https://10.0.0.1:2379", "etcdctl": str(tmp_path / "none"),
                           "ca": "", "cert": "", "key": ""})
    code, out, err = etcd.etcdctl(etcd.own, "endpoint", "health")
    assert (code, out) == (1, "") and err == f"cannot run {tmp_path / 'none'} (No such file or directory)"
    with pytest.raises(transport.Retry, match="cannot run"):
        etcd.ctl("user", "list")
