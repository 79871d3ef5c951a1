"""report: put the instance-id of the seed the install step last applied under member.json's "seed_key",
through this node's own etcd, where `etcd-seed status` reads it: the node runs that seed once its etcd
answers."""

from __future__ import annotations

import re

from etcd_seed_node.transport import ROOT, UNTIL_DEADLINE, Etcd, Meta, Refused, Retry, say

SEED_ID = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?-[0-9a-f]{16}")  # a node name and a digest


def report(etcd: Etcd) -> int:
    """The seed's instance-id under this node's key, written only when the key says otherwise."""
    try:
        with open(ROOT + etcd.cfg["applied"], encoding="ascii") as handle:
            seed = handle.read(200).strip()
    except (OSError, ValueError) as exc:
        raise Refused(f"no record of an applied seed ({exc}); the install step writes it") from None
    if not SEED_ID.fullmatch(seed):
        raise Refused(f"{etcd.cfg['applied']} holds {seed[:80]!r}, not an instance-id")
    key = etcd.cfg["seed_key"]
    want = etcd.cfg.get("auth")
    # On the node that applies auth, the seed runs only once etcd's users, roles and grants are as it says.
    # Whether auth is on is not asked: etcd's AuthStatus goes through raft, and a 3.4 member of a cluster being
    # upgraded cannot apply it (it crashed in tests/etcd/test_converge.py's rollback).
    if want is not None:
        try:
            from etcd_seed_node import auth  # only the node that applies auth has the module
        except ImportError:  # its seed's install is under way: member.json is in place before the module
            raise Retry("this node applies auth, and its auth job is not in place yet") from None
        if pending := len(auth.plan(etcd, want)):
            raise Retry(f"etcd's users, roles and grants are not yet as seed {seed} has them ({pending} changes to "
                        "make): etcd-seed-auth.service makes them")
    code, out, err = etcd.etcdctl(etcd.own, "get", key, "--print-value-only")
    if code != 0:
        raise Retry(f"etcd on {etcd.name} does not answer a read of {key} ({err})")
    if out.strip() == seed:
        say(f"report: {etcd.name} runs seed {seed} (as recorded)")
        return 0
    code, _, err = etcd.etcdctl(etcd.own, "put", key, seed)
    if code != 0:
        raise Retry(f"put {key} failed ({err})")
    say(f"report: {etcd.name} runs seed {seed}")
    return 0


META = Meta(job="report", unit="etcd-seed-report.service", schedule="after etcd, at boot and after each new seed",
            retry=UNTIL_DEADLINE, run=report)
