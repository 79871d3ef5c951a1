"""The member script's checks on what etcd answers, as pure functions, and its errors as a process.

etcd-seed-member writes membership.env from `member list` and `member add`; systemd reads that file after
options.env, so a name or URL that etcd hands over must never carry a line or a setting of its own. Real
etcd cannot be made to list a member name with a newline in it, so these answers are written here; the
real-etcd cases (a foreign peer URL, a member of another name) are in test_membership.py.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

from tests.helpers.specs import ROOT

SCRIPT = ROOT / "templates" / "etcd-seed-member.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("etcd_seed_member", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


member = _load()
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
    with pytest.raises(member.Refused):
        member.checked_members({"members": [GOOD, {**GOOD, "ID": 0x99, **bad}]}, "member list")


def test_members_of_the_right_shape_pass() -> None:
    unstarted = {"ID": 0x77, "peerURLs": ["https://10.0.0.4:2380"]}  # no name until it starts
    members = member.checked_members({"members": [GOOD, unstarted]}, "member list")
    cluster = member.initial_cluster(members, 0x1234, "etcd01")
    assert cluster == "etcd01=https://10.0.0.1:2380,unstarted-77=https://10.0.0.4:2380"
    assert member.membership_env("etcd01", cluster).splitlines()[1:] == [
        f"ETCD_INITIAL_CLUSTER={cluster}", "ETCD_INITIAL_CLUSTER_STATE=existing"]


@pytest.mark.parametrize("cluster", ["etcd01=https://10.0.0.1:2380\nETCD_X=1", "a=b", "etcd01=https://10.0.0.1:2380,"])
def test_membership_env_refuses_anything_unchecked(cluster: str) -> None:
    with pytest.raises(member.Refused):
        member.membership_env("etcd01", cluster)


@pytest.mark.parametrize("text", ["", "not json", "[]", "{}", '{"members": 3}', '"x"', "null"])
def test_unparsable_answers_are_refused(text: str) -> None:
    with pytest.raises(member.Refused):
        member.checked_members(member.parse_json(text, "member list"), "member list")


@pytest.mark.parametrize("config", ["", "{", '{"name": "etcd01"}', "[]"])
def test_a_broken_config_is_an_error_line_not_a_traceback(tmp_path: Path, config: str) -> None:
    (tmp_path / "etc/etcd").mkdir(parents=True)
    (tmp_path / "etc/etcd/member.json").write_text(config)
    done = subprocess.run([sys.executable, str(SCRIPT), "prepare"], env={"ETCD_SEED_ROOT": str(tmp_path)},
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 1
    assert done.stderr.startswith("etcd-seed: ERROR: ") and "Traceback" not in done.stderr, done.stderr


def test_stale_entries_are_only_our_own() -> None:
    """In replace mode only an entry with this node's name, or an unstarted one at its peer URL, is stale; a started
    member of another name at its URL is refused before anything is removed."""
    cfg = {"name": "etcd03", "peer_url": "https://10.0.0.3:2380", "peers": []}
    node = member.Member(cfg)
    other = {"ID": 1, "name": "etcd09", "peerURLs": ["https://10.0.0.3:2380"], "clientURLs": []}
    with pytest.raises(member.Refused, match="taken by member etcd09"):
        node.remove_stale([other])
    with pytest.raises(member.Refused, match="taken by member etcd09"):
        node.add([other])
    moved = {"ID": 2, "name": "etcd03", "peerURLs": ["https://10.0.0.7:2380"], "clientURLs": []}
    with pytest.raises(member.Refused, match="its address changed"):
        node.add([moved])


def test_promotion_goes_to_the_leader() -> None:
    """etcd through 3.5.16 drops the caller's identity when a follower forwards `member promote` to the leader, and
    with auth on the promotion then fails ("auth: user name is empty"): it is sent to the leader's client URLs,
    and to the seed's peers only when the leader is unknown or lists URLs that are not https://<IPv4>:<port>."""
    peers = ["https://10.0.0.1:2379", "https://10.0.0.2:2379"]
    node = member.Member({"name": "etcd04", "peer_url": "https://10.0.0.4:2380", "peers": peers})
    follower = {"ID": 1, "name": "etcd01", "peerURLs": ["https://10.0.0.1:2380"], "clientURLs": [peers[0]]}
    leader = {"ID": 2, "name": "etcd02", "peerURLs": ["https://10.0.0.2:2380"], "clientURLs": [peers[1]]}
    assert node.leader_urls([follower, leader], 2) == [peers[1]]
    assert node.leader_urls([follower, leader], None) == peers
    assert node.leader_urls([follower, leader], 3) == peers
    hostile = {**leader, "clientURLs": ["https://10.0.0.2:2379 --insecure-skip-tls-verify"]}
    assert node.leader_urls([follower, hostile], 2) == peers


def test_config_is_json_the_build_writes() -> None:
    """Guards the case above: member.json's keys are the ones Member reads."""
    from generator import node as node_facts
    from generator.spec import load_spec
    from tests.helpers.specs import spec_yaml
    spec, _ = load_spec(spec_yaml(), base_dir=ROOT)
    config = json.loads(json.dumps(node_facts.member_config(spec, spec.nodes[2])))
    node = member.Member(config)
    assert node.name == "etcd03" and node.peer_url == "https://192.168.0.3:2380"


def test_initial_cluster_names_this_node_and_the_unstarted_by_hex_id() -> None:
    """ETCD_INITIAL_CLUSTER from checked members: this node under its own name, an unstarted member as
    unstarted-<hex ID>, every one of its peer URLs."""
    unstarted = {"ID": 0x77, "peerURLs": ["https://10.0.0.4:2380"]}
    members = member.checked_members({"members": [GOOD, unstarted]}, "member list")
    assert member.initial_cluster(members, 0x77, "etcd04") == \
        "etcd01=https://10.0.0.1:2380,etcd04=https://10.0.0.4:2380"
    assert member.initial_cluster(members, 0x1234, "etcd01") == \
        "etcd01=https://10.0.0.1:2380,unstarted-77=https://10.0.0.4:2380"


def test_a_taken_peer_url_names_the_member_by_hex_id() -> None:
    """The operator is told which member holds the address, by name and by the hex ID etcdctl prints."""
    node = member.Member({"name": "etcd02", "peer_url": "https://10.0.0.1:2380"})
    with pytest.raises(member.Refused, match=r"taken by member etcd01 \(1234\)"):
        node.taken(member.checked_members({"members": [GOOD]}, "member list"))


MIB = 1 << 20


@pytest.mark.parametrize(("size", "in_use", "expected"), [
    (100 * MIB, 50 * MIB, "50% of it free"),  # exactly the threshold
    (100 * MIB, 51 * MIB, None),  # just under it, far from the quota
    (1700 * MIB, 1690 * MIB, "the file is at 83% of the quota"),  # near the 2 GiB quota: any free page counts
    (1700 * MIB, 1700 * MIB, None),  # near the quota with nothing to reclaim: a defrag would not help
    (0, 0, None),
    (20 * 1024, 16 * 1024, None),  # a new member's file
])
def test_defrag_is_worth_it_when_half_is_free_or_the_file_nears_its_quota(size: int, in_use: int,
                                                                          expected: str | None) -> None:
    assert member.defrag_reason(size, in_use, 2048 * MIB, 50, 80) == expected


def test_an_active_nospace_alarm_makes_any_free_page_worth_it() -> None:
    """A member below the near-quota mark whose neighbour raised NOSPACE: the alarm clears only once every file is
    small again, so this one defragments too (seen on real etcd: 5.5 of 12.6 MiB free under a 16 MiB quota)."""
    args = (int(12.6 * MIB), int(7.1 * MIB), 16 * MIB, 50, 80)
    assert member.defrag_reason(*args) is None
    assert member.defrag_reason(*args, nospace=True) == "a NOSPACE alarm is active"
    assert member.defrag_reason(MIB, MIB, 16 * MIB, 50, 80, nospace=True) is None


def test_sizes_below_a_mebibyte_read_in_kibibytes() -> None:
    assert [member.mib(n) for n in (20480, MIB, 15 * MIB + MIB // 2)] == ["20 KiB", "1.0 MiB", "15.5 MiB"]


def test_clock_wait_ends_when_the_kernel_says_synchronised(capsys: pytest.CaptureFixture[str]) -> None:
    answers = iter([False, False, True])
    assert member.wait_for_clock(30, synchronised=lambda: next(answers), pause_s=0.01) == 0
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "etcd-seed: clock: not synchronised yet; waiting up to 30 s for the time servers in network.ntp"
    assert lines[1].startswith("etcd-seed: clock: synchronised after 0 s; now ") and len(lines) == 2
    with pytest.raises(StopIteration):
        next(answers)  # asked exactly three times: it stopped at the first yes


def test_clock_wait_is_bounded_and_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    asked: list[float] = []

    def never() -> bool:
        asked.append(time.monotonic())
        return False

    assert member.wait_for_clock(1, synchronised=never, pause_s=0.05) == 0
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2
    assert lines[1].startswith("etcd-seed: WARNING: clock: not synchronised after 1 s; starting anyway")
    assert len(asked) > 2


def test_clock_wait_without_time_servers_or_a_readable_clock(capsys: pytest.CaptureFixture[str]) -> None:
    assert member.wait_for_clock(0, synchronised=lambda: pytest.fail("asked without network.ntp")) == 0
    assert capsys.readouterr().err == "etcd-seed: clock: no time servers in the seed (network.ntp); not waiting\n"

    def broken() -> bool:
        raise OSError(1, "Operation not permitted")

    assert member.wait_for_clock(5, synchronised=broken) == 0
    assert capsys.readouterr().err.startswith("etcd-seed: WARNING: clock: cannot read the kernel's clock state")


def test_clock_reads_this_kernel(tmp_path: Path) -> None:
    """The real adjtimex(2): the maximum error lies within the kernel's 16 s cap, and at the cap the kernel has also
    set STA_UNSYNC (it sets both together), which a struct laid out wrong would not show. Then the `clock` step as
    the unit runs it, with a 1 s bound, ends with a line that agrees with this kernel's state."""
    timex = member.Timex()
    libc = member.ctypes.CDLL(None, use_errno=True)
    assert libc.adjtimex(member.ctypes.byref(timex)) >= 0
    assert 0 <= timex.maxerror <= member.UNSYNCED_MAXERROR_US
    if timex.maxerror == member.UNSYNCED_MAXERROR_US:
        assert timex.status & 0x40, hex(timex.status)  # STA_UNSYNC
    (tmp_path / "etc/etcd").mkdir(parents=True)
    (tmp_path / "etc/etcd/member.json").write_text('{"name": "etcd01", "clock_wait_s": 1}')
    done = subprocess.run([sys.executable, str(SCRIPT), "clock"], env={"ETCD_SEED_ROOT": str(tmp_path)},
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    expected = "clock: synchronised" if member.clock_synchronised() else "WARNING: clock: not synchronised after 1 s"
    assert done.stderr.splitlines()[-1].startswith("etcd-seed: " + expected), done.stderr


def test_auth_step_without_auth_in_its_config_does_nothing(tmp_path: Path) -> None:
    """A node that is no longer the spec's first keeps no auth in member.json: the step says so and succeeds, rather
    than fail and be restarted by systemd for ever (it never calls etcdctl: the path below does not exist)."""
    (tmp_path / "etc/etcd").mkdir(parents=True)
    config = {"name": "etcd02", "peer_url": "https://10.0.0.2:2380", "client_url": "https://10.0.0.2:2379",
              "etcdctl": "/nonexistent/etcdctl", "ca": "/x", "cert": "/x", "key": "/x", "timeout_s": 5,
              "refused_pause_s": 0}
    (tmp_path / "etc/etcd/member.json").write_text(json.dumps(config))
    done = subprocess.run([sys.executable, str(SCRIPT), "auth"], env={"ETCD_SEED_ROOT": str(tmp_path)},
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "etcd-seed: auth: this node's seed leaves etcd's users and roles to the spec's first node\n"


class _ScriptedEtcd(member.Member):  # type: ignore[misc,name-defined]
    """Answers the auth step's etcdctl calls from a table, and records the calls. A user with a line break in its
    name can be made by anyone holding root; what matters here is the line the step logs about it."""

    def __init__(self, answers: dict[tuple[str, ...], str]) -> None:
        super().__init__({"name": "etcd01", "peer_url": "https://10.0.0.1:2380", "client_url": "https://10.0.0.1:2379",
                          "auth": {"enabled": True, "users": {"root": ["root"]}, "roles": {}}})
        self.answers = answers
        self.calls: list[tuple[str, ...]] = []

    def ctl(self, *args: str) -> str:
        self.calls.append(args)
        return self.answers.get(args, "")


def test_auth_step_names_a_hostile_user_on_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    evil = "evil\netcd-seed: auth: on; 1 users and 0 roles in step"
    etcd = _ScriptedEtcd({("user", "list", "-w", "json"): json.dumps({"users": ["root", evil]}),
                          ("role", "list", "-w", "json"): json.dumps({"roles": ["root"]}),
                          ("user", "get", "--", "root"): "User: root\nRoles: root\n"})
    assert etcd.auth() == 0
    assert ("user", "delete", "--", evil) in etcd.calls
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("etcd-seed: auth: on; 1 users and 0 roles in step (user 'evil\\n")


@pytest.mark.parametrize("applied", ["", "etcd01-0123", "etcd01-0123456789abcdef; rm -rf /", "ETCD01-0123456789abcdef",
                                     "etcd01-0123456789abcdeg"])
def test_report_refuses_a_record_that_is_not_an_instance_id(tmp_path: Path, applied: str) -> None:
    """The report puts into etcd only a value of the shape render makes: anything else in the applied file is
    refused before etcdctl is run (it would fail: there is no etcdctl at this path)."""
    (tmp_path / "applied").write_text(applied + "\n")
    node = member.Member({"name": "etcd01", "peer_url": "https://10.0.0.1:2380", "client_url": "https://10.0.0.1:2379",
                          "applied": str(tmp_path / "applied"), "seed_key": "/etcd-seed/seed/etcd01",
                          "etcdctl": str(tmp_path / "no-etcdctl"), "ca": "", "cert": "", "key": ""})
    with pytest.raises(member.Refused, match="not an instance-id"):
        node.report()


def test_report_without_a_record_is_refused(tmp_path: Path) -> None:
    node = member.Member({"name": "etcd01", "peer_url": "https://10.0.0.1:2380", "applied": str(tmp_path / "none")})
    with pytest.raises(member.Refused, match="no record of an applied seed"):
        node.report()


class _ReportingEtcd(_ScriptedEtcd):
    """The auth step's table, plus the report's own calls: the get and put of its record, and nothing else (etcd's
    AuthStatus goes through raft, and a 3.4 member in a cluster being upgraded cannot apply it)."""

    def __init__(self, answers: dict[tuple[str, ...], str], applied: Path) -> None:
        super().__init__(answers)
        applied.write_text("etcd01-0123456789abcdef\n")
        self.cfg.update({"applied": str(applied), "seed_key": "/etcd-seed/seed/etcd01"})
        self.sent: list[tuple[str, ...]] = []

    def etcdctl(self, endpoints: list[str], *args: str, timeout_s: int = 15) -> tuple[int, str, str]:
        self.sent.append(args)
        return 0, "", ""


IN_STEP = {("user", "list", "-w", "json"): json.dumps({"users": ["root"]}),
           ("role", "list", "-w", "json"): json.dumps({"roles": ["root"]}),
           ("user", "get", "--", "root"): "User: root\nRoles: root\n"}


@pytest.mark.parametrize(("answers", "reported"), [
    (IN_STEP, True),
    ({**IN_STEP, ("user", "list", "-w", "json"): json.dumps({"users": ["root", "ops"]})}, False),
    ({**IN_STEP, ("user", "get", "--", "root"): "User: root\nRoles:\n"}, False),
], ids=["in-step", "a-user-to-delete", "a-role-to-grant"])
def test_the_first_node_reports_its_seed_only_once_auth_is_as_the_seed_has_it(
        tmp_path: Path, answers: dict[tuple[str, ...], str], reported: bool) -> None:
    """On the node that applies auth, the seed runs only once etcd's users, roles and grants are as it says: before,
    the record went in as soon as etcd answered, and `status` said in step while the auth step was still failing."""
    node = _ReportingEtcd(answers, tmp_path / "applied")
    if reported:
        assert node.report() == 0
        assert node.sent == [("get", "/etcd-seed/seed/etcd01", "--print-value-only"),
                             ("put", "/etcd-seed/seed/etcd01", "etcd01-0123456789abcdef")]
    else:
        with pytest.raises(member.Retry, match="not yet as seed etcd01-0123456789abcdef has them"):
            node.report()
        assert node.sent == []
    assert not [c for c in node.calls if c[0] in ("user", "role") and c[1] not in ("list", "get")]  # only reads
