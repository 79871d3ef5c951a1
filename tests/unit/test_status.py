"""status' pure core: metrics parsing and the assessment of what members answered. No network here: the
real-etcd cases (a converged cluster, a rolling renewal, a member down, a foreign certificate) are in
tests/etcd/test_status.py; these cover the answers real etcd cannot be made to give on cue."""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from generator.status import Answer, assess, parse_metrics, render
from tests.helpers.specs import parse, spec_yaml

SPEC = parse(spec_yaml())


def _der(cn: str) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + dt.timedelta(days=365))
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.DER)


NEW, OLD = _der("new"), _der("old")
ISSUED = {n.name: hashlib.sha256(NEW).hexdigest() for n in SPEC.nodes}
SEEDS = {n.name: f"{n.name}-{'a' * 16}" for n in SPEC.nodes}
MEMBERS: list[dict[str, Any]] = [{"id": 10 + i, "name": n.name, "peerURLs": [f"https://{n.ip}:2380"]}
                                 for i, n in enumerate(SPEC.nodes)]


def _answer(name: str, leader: bool = False, cert: bytes = NEW, version: str = "3.5.1", applied: int = 12,
            members: list[dict[str, Any]] | None = None, health: str = "true", reason: str = "",
            seed: str | None = "a" * 16, seed_error: str | None = None) -> Answer:
    text = (f"# HELP etcd_server_is_leader x\netcd_server_is_leader {int(leader)}\netcd_server_has_leader 1\n"
            f'etcd_server_is_learner 0\netcd_server_version{{server_version="{version}"}} 1\n'
            f'etcd_cluster_version{{cluster_version="3.0"}} 0\netcd_cluster_version{{cluster_version="3.5"}} 1\n'
            f"etcd_server_quota_backend_bytes 2.147483648e+09\netcd_mvcc_db_total_size_in_bytes 20480\n"
            f"etcd_mvcc_db_total_size_in_use_in_bytes 16384\netcd_server_proposals_committed_total 12\n"
            f"etcd_server_proposals_applied_total {applied}\n")
    return Answer(name, client_cert=cert, peer_cert=cert, metrics=parse_metrics(text),
                  health={"health": health, "reason": reason}, members=MEMBERS if members is None else members,
                  seed=None if seed is None else f"{name}-{seed}", seed_error=seed_error)


def test_metrics_parse_labels_values_and_skip_the_rest() -> None:
    parsed = parse_metrics('a_b{x="1",y="two"} 2.5e+00\n# TYPE a_b gauge\nc 3\nbroken line here\nd{z="q"} NaN\n')
    assert parsed["a_b"] == [({"x": "1", "y": "two"}, 2.5)] and parsed["c"] == [({}, 3.0)]
    assert "broken" not in parsed and len(parsed["d"]) == 1


def test_in_step_cluster_has_nothing_to_roll() -> None:
    status = assess(SPEC, ISSUED, SEEDS, [_answer("etcd01", leader=True), _answer("etcd02", applied=9),
                                   _answer("etcd03")], None)
    assert status.problems == [] and status.exit_code == 0 and status.next == "nothing to roll"
    assert status.cluster_version == "3.5"  # the set sample, not the 3.0 etcd keeps at 0
    assert [r.raft_lag for r in status.rows] == [0, 3, 0]
    assert render(status).splitlines()[-1] == "healthy and in step with the build"


def test_followers_are_rolled_before_the_leader() -> None:
    answers = [_answer("etcd01", cert=OLD), _answer("etcd02", leader=True, cert=OLD), _answer("etcd03")]
    status = assess(SPEC, ISSUED, SEEDS, answers, None)
    assert status.next == "etcd01 (a follower)" and status.exit_code == 1
    assert "etcd01: serves an older certificate on 2379 than pki/etcd01.crt: its new seed is not running yet" \
        in status.problems
    answers[0] = _answer("etcd01")
    assert assess(SPEC, ISSUED, SEEDS, answers, None).next == "etcd02 (the leader, last)"


def test_a_release_behind_the_build_is_behind() -> None:
    status = assess(SPEC, ISSUED, SEEDS, [_answer("etcd01", leader=True), _answer("etcd02", version="3.4.23"),
                                   _answer("etcd03")], "phase 1")
    assert status.problems == ["etcd02: runs etcd 3.4.23, the build says 3.5.1"]
    assert status.next == "etcd02 (a follower)"
    assert "CA rotation: phase 1" in render(status)


def test_an_unreachable_member_blocks_the_roll_and_an_alarm_is_a_problem() -> None:
    answers = [_answer("etcd01", leader=True, health="false", reason="ALARM NOSPACE"),
               Answer("etcd02", error="does not answer on 192.168.0.2:2379 (no answer within 5 s)"),
               _answer("etcd03", cert=OLD)]
    status = assess(SPEC, ISSUED, SEEDS, answers, None)
    assert status.next == "wait: etcd02 does not answer; roll nothing else until it is back"
    assert status.problems[:2] == ["etcd01: not healthy (ALARM NOSPACE)",
                                   "etcd02: does not answer on 192.168.0.2:2379 (no answer within 5 s)"]
    assert status.rows[0].alarms == "ALARM NOSPACE" and not status.rows[1].reachable


def test_members_outside_the_spec_and_spec_nodes_outside_the_cluster() -> None:
    members = [*MEMBERS[:2], {"id": 0xABC, "name": "", "peerURLs": ["https://192.168.0.9:2380"]}]
    status = assess(SPEC, ISSUED, SEEDS, [_answer("etcd01", leader=True, members=members), _answer("etcd02"),
                                   _answer("etcd03")], None)
    assert status.unknown_members == ["unstarted (abc) at https://192.168.0.9:2380"]
    assert status.missing_members == ["etcd03"]
    assert "spec node etcd03 is not a member of the cluster" in status.problems


def test_a_node_whose_record_names_an_older_seed_is_behind() -> None:
    """A change etcd does not expose (a timer, the heartbeat, a new CRL, a CA rotation's phase 1) is seen only
    through the seed each node reports: before the record, such a cluster showed 'nothing to roll'."""
    answers = [_answer("etcd01", leader=True, seed="b" * 16), _answer("etcd02", seed="b" * 16), _answer("etcd03")]
    status = assess(SPEC, ISSUED, SEEDS, answers, None)
    assert status.next == "etcd02 (a follower)" and status.exit_code == 1
    assert [r.state for r in status.rows] == ["behind", "behind", "in step"]
    assert status.problems == [f"etcd01: runs seed etcd01-{'b' * 16}, the build's is etcd01-{'a' * 16}: roll it",
                               f"etcd02: runs seed etcd02-{'b' * 16}, the build's is etcd02-{'a' * 16}: roll it"]
    answers[1] = _answer("etcd02")
    assert assess(SPEC, ISSUED, SEEDS, answers, None).next == "etcd01 (the leader, last)"


def test_a_node_without_a_readable_record_is_unknown_never_in_step() -> None:
    why = "etcd holds no /etcd-seed/seed/etcd02: its seed predates the record, or etcd-seed-report has not run yet"
    answers = [_answer("etcd01", leader=True), _answer("etcd02", seed=None, seed_error=why), _answer("etcd03")]
    status = assess(SPEC, ISSUED, SEEDS, answers, None)
    assert [r.state for r in status.rows] == ["in step", "unknown", "in step"] and not status.rows[1].in_step
    assert status.next == "etcd02 (a follower; which seed it runs is unknown)" and status.exit_code == 1
    assert status.problems == [f"etcd02: cannot tell which seed it runs ({why}); roll it, or see docs/operations.md"]
    table = render(status).splitlines()
    assert table[2].endswith("unknown") and table[1].endswith("in step")
    # An older certificate says behind whatever the record says.
    answers[1] = _answer("etcd02", cert=OLD, seed=None, seed_error=why)
    assert assess(SPEC, ISSUED, SEEDS, answers, None).rows[1].state == "behind"


def test_a_node_that_hides_its_version_is_unknown_and_says_why() -> None:
    answers = [_answer("etcd01", leader=True), _answer("etcd02"), _answer("etcd03")]
    answers[1] = Answer("etcd02", client_cert=NEW, peer_cert=NEW, metrics=parse_metrics("etcd_server_has_leader 1\n"),
                        health={"health": "true"}, members=MEMBERS, seed=f"etcd02-{'a' * 16}")
    status = assess(SPEC, ISSUED, SEEDS, answers, None)
    assert status.rows[1].state == "unknown" and status.next == "etcd02 (a follower)"
    assert status.problems == ["etcd02: shows no etcd version or quota in /metrics: cannot tell whether it runs the "
                               "build's"]
