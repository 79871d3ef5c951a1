"""Notes: every sentence the build shows the operator, in one place to review them together.

Membership (join, replace, leave, a changed address, a removed client), the rolling order, the CA
rotation's phases, etcd version changes, and the build's and plan's reports. The core returns
these as text; only the CLI prints.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from . import fields, layout
from .auth import UNMANAGED as auth_unmanaged
from .auth import Decision as AuthDecision
from .auth import table as auth_table
from .errors import printable
from .etcd import Version, VersionChange
from .node import peer_url
from .plan import FileStatus
from .rotation import Phase, describe
from .spec import Spec

if TYPE_CHECKING:
    from .decisions import Decisions
    from .manifest import Manifest, Revoked
    from .plan import BuildPlan

_ADMIN = f"from {layout.PKI}/, run: set -a && . ./etcdctl.env && set +a &&"


def _member_id(name: str) -> str:
    """A shell expression for a member's ID, looked up by name in `etcdctl member list`."""
    return f"\"$(etcdctl member list | awk -F', ' '$3 == \"{name}\" {{print $1}}')\""


def membership(spec: Spec, decided: Decisions, previous: Manifest, built: set[str],
               replacing: frozenset[str]) -> list[str]:
    """What the operator does, or may do by hand, for members that join, are replaced or leave."""
    notes = []
    for node in spec.nodes:
        manual = (f"by hand instead, {_ADMIN} etcdctl member add {node.name} --peer-urls={peer_url(node)} "
                  f"--learner, and once it has caught up, etcdctl member promote <its ID>")
        if node.replace and node.name in replacing:
            notes.append(f"{node.name} is replaced with a new key: boot it from its new seed on an empty disk; it "
                         f"removes its stale member entry while the others keep quorum, joins as a learner and "
                         f"promotes itself (journalctl -u etcd -u etcd-seed-promote shows each step); {manual}")
        elif node.join and node.name not in built:
            first = (f"re-seed {spec.nodes[0].name} first, which creates {node.name}'s etcd user (it waits for it "
                     "otherwise); then " if decided.auth.on else
                     f"if auth is on in the cluster (the build leaves it as the cluster has it), create the etcd user "
                     f"{node.name} with the root role by hand first (it waits for it otherwise); then "
                     if not decided.auth.managed else "")
            notes.append(f"{node.name} joins the running cluster by itself: {first}boot it from its seed; it adds "
                         f"itself as a learner and promotes itself once it has caught up; {manual}")
        old = _previous_ips(previous, node.name)
        if node.name in built and node.name not in replacing and old and str(node.ip) not in old:
            notes.append(f"{node.name}'s address changed from {', '.join(old)} to {node.ip}: etcd keeps a member's "
                         "peer URL in the cluster's membership, not in its seed, and a member that already holds "
                         "data does not register again; before you roll its new seed, "
                         f"{_ADMIN} etcdctl member update {_member_id(node.name)} --peer-urls={peer_url(node)} ; or "
                         "mark it replace: true to boot it afresh on an empty disk")
    for name in sorted(built - {n.name for n in spec.nodes}):
        notes.append(f"{name} left the spec: take it out of the cluster before you power it off; {_ADMIN} "
                     f"etcdctl member remove {_member_id(name)} "
                     f"; then delete {name}/, {layout.key_file(name)}, {layout.cert_file(name)} and "
                     f"{layout.key_file(layout.host_key_name(name))} from the output")
    clients = {c.name for c in spec.clients}
    left: dict[str, list[str]] = {}
    for path in sorted(p for p in previous.files if p.startswith(f"{layout.CLIENTS}/")):
        name = path.removeprefix(f"{layout.CLIENTS}/").split(".", 1)[0]
        if name not in clients:
            left.setdefault(name, []).append(path)
    for name, paths in left.items():
        notes.append(f"client {name} is no longer in use: delete {', '.join(paths)}, {layout.key_file(name)} and "
                     f"{layout.cert_file(name)} from the output")
    if spec.etcd.restore is not None:
        notes.append("restore: boot every member on an empty disk from its new seed; each restores the snapshot "
                     "once, then the members form a new cluster (new token and cluster ID); power off every old "
                     "member first, and remove etcd.restore from the spec once the cluster is up")
    return notes


def auth(spec: Spec, decision: AuthDecision, previous: Manifest) -> list[str]:
    """What a change of etcd's authentication means for a running cluster."""
    if not decision.managed:
        return [auth_unmanaged]
    if previous.format == 0 or previous.auth_enabled == decision.enabled:
        return []
    first = spec.nodes[0].name
    if previous.auth_enabled is None:
        state = "on" if decision.on else "off"
        return [f"auth: now managed: once {first} runs its new seed, it deletes the etcd users and roles the spec does "
                f"not name (those made by hand too), applies the spec's, and turns auth {state}; 'plan' lists each "
                "consumer's access: check it before you roll"]
    if not decision.on:
        return [f"auth: turned off once {first} runs its new seed; every certificate can then read and write every key"]
    return [f"auth: turned on by {first} once it runs its new seed (the others' seeds do not change for it); from then "
            "on each consumer can use only its own keys, as 'plan' lists them: check that every consumer has the "
            "access it needs before you roll"]


def revocation(revoked: tuple[Revoked, ...], before: tuple[Revoked, ...]) -> list[str]:
    """What a certificate revoked by this build means, and what the operator must do for it to take effect."""
    listed = {r.serial for r in before}
    return [f"{r.name}: its certificate (serial {r.serial}, valid until {r.not_after}) is revoked ({r.reason}); "
            f"every member refuses it once it runs a seed of this build (no restart: etcd reads {layout.CRL} on each "
            "new connection), so re-seed every node" for r in revoked if r.serial not in listed]


def library_update(updates: Sequence[str], only: bool) -> str:
    """Which library versions changed since the tree was last written, and whether they alone explain the changes."""
    since = f"library update since this tree was last written: {', '.join(updates)}"
    if only:
        return (f"{since}; the spec, etcd-seed, the bundle and every key and certificate are unchanged, so every "
                "change above comes from that update alone")
    return f"{since}; some of the changes above may come from it"


def _previous_ips(previous: Manifest, name: str) -> list[str]:
    """The IPv4 addresses the previous build's certificate for a node named."""
    record = previous.certificates.get(layout.cert_file(name))
    return [ip for ip in record.ips if ip != "127.0.0.1"] if record else []


def rolling_order(names: Sequence[str]) -> str:
    """What the operator does with changed seeds of a running cluster, one node at a time."""
    steps = "; ".join(f"{i}. {name}" for i, name in enumerate(names, 1))
    return (f"roll the changed seeds one node at a time: attach the node's new {layout.SEED_ISO} and reboot it, then "
            f"wait until 'ETCDCTL_ENDPOINTS=https://<its IP>:2379 etcdctl endpoint health' reports that member "
            f"healthy before the next ({steps}); "
            "take the leader last ('python -m generator status' names the node to roll next)")


_DOES = {
    Phase.TRUST_BOTH: "every node trusts the old and the new CA; certificates stay as they are",
    Phase.ISSUE: "every certificate is issued from the new CA, keys kept; nodes still trust both CAs",
    Phase.TRUST_NEW: f"nodes trust only the new CA; the old CA and its key are gone from {layout.PKI}/",
}


def rotation(phase: Phase, stepped: bool) -> str | None:
    """What the operator does next in a CA rotation; None outside one."""
    if phase is Phase.NONE or (phase is Phase.TRUST_NEW and not stepped):
        return None
    roll = "roll every node with its new seed, one at a time, each healthy before the next"
    if phase is Phase.TRUST_BOTH:
        then = (f"then run 'rotate-ca issue'; give consumers {layout.CA_BUNDLE} as their CA file now, since "
                "members will present certificates of either CA")
    elif phase is Phase.ISSUE:
        then = ("then give every consumer its reissued certificate and run 'rotate-ca finish', which deletes "
                f"the old CA's key ({layout.key_file(layout.CA_NAME)} until then) and makes "
                f"{layout.cert_file(layout.CA_NAME)} the new CA")
    else:
        then = ("then the rotation is complete: a certificate of the old CA is refused from now on; run 'seal' "
                f"again so that {layout.sealed_file(layout.key_file(layout.CA_NAME))} holds the new CA's key")
    return f"CA rotation: phase {phase:d} of 3 ({describe(phase)}): {_DOES[phase]}; {roll}; {then}"


def version_change(change: VersionChange, before: Version | None, after: Version) -> tuple[str, str | None]:
    """How moving the cluster from `before` to `after` reads: (a note, the refusal or None)."""
    if change is VersionChange.SAME or before is None:
        return "", None
    if change is VersionChange.ROLLBACK:
        return f"rollback: etcd {before} -> {after} (only while some members still run {after})", None
    if change is VersionChange.DOWNGRADE:
        return (f"downgrade: etcd {before} -> {after}",
                f"{before} -> {after} is a downgrade; etcd only goes back while a rolling upgrade is "
                "unfinished (some members still on the old version): build with --allow-downgrade for that")
    if change is VersionChange.PATCH:
        return f"patch upgrade: etcd {before} -> {after}", None
    if change is VersionChange.MINOR:
        return f"upgrade: etcd {before} -> {after} (one minor step)", None
    return "", (f"{before} -> {after} skips a minor version, which etcd does not support; upgrade to the "
                f"newest {before.major}.{before.minor + 1}.x first, roll every node, then build again")


def upgrade_floor(before: Version | None, after: Version) -> str | None:
    """A warning when the cluster's current version is below the floor etcd requires for this upgrade."""
    floor = after.upgrade_floor(before)
    if floor is None:
        return None
    return (f"etcd.version: every member must run {floor} or later before moving to {after} "
            f"(etcd's upgrade_3_6 guide); the cluster runs {before}: do a patch upgrade to {floor} first")


# The build's and plan's reports, as the CLI prints them: (stdout text, stderr text).

def recovered(step: str | None) -> str:
    """The first line of a build that completed a killed run's renames first."""
    return f"completed the run that was interrupted{f' (rotate-ca {step})' if step else ''}\n"


def _size(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MiB"


def _table(rows: list[tuple[str, ...]]) -> str:
    header = ("node", "ip", "cert expires", layout.SEED_ISO)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() + "\n"
                   for row in [header, *rows])


def _notes(plan: BuildPlan) -> tuple[str, str]:
    return ("".join(f"{note}\n" for note in plan.notes),
            "".join(f"warning: {printable(warning)}\n" for warning in plan.warnings))


def build_report(plan: BuildPlan, root: str, removed: Sequence[str], written: int) -> tuple[str, str]:
    """What `build` prints: what it did, each node's certificate and seed, how to check, then the notes."""
    out = [f"removed {rel}: left by a run that was killed\n" for rel in removed]
    out += [f"pki: {event}\n" for event in plan.pki.events]
    out += [f"moved {layout.sealed_path(source)} to {layout.sealed_path(target)}: the sealed copy follows its "
            "key\n" for source, target in plan.sealed_moves]
    out += [f"deleted {rel}\n" for rel in plan.deletes]
    total = len(plan.files) + 1
    out.append(f"{root}: {written} of {total} files written" + ("" if written else " (nothing changed)") + "\n")
    sizes: Mapping[str, int] = {node: f.size for f in plan.files if (node := layout.built_node(f.path))}
    out.append(_table([(node.name, str(node.ip), f"{plan.pki.leaves[node.name].cert.not_valid_after_utc:%Y-%m-%d}",
                        _size(sizes[node.name])) for node in plan.spec.nodes]))
    out.append(f"check the cluster: cd {root}/{layout.PKI} && set -a && . ./etcdctl.env && set +a && "
               "etcdctl endpoint health\n")
    notes, warnings = _notes(plan)
    return "".join(out) + notes, warnings


def plan_report(plan: BuildPlan, root: str) -> tuple[str, str]:
    """What `plan` prints: each file that would change and how, the counts, then the notes."""
    from .pki import Change

    changed = plan.changed
    out = [f"pki: {event}\n" for event in plan.pki.events if event.change is not Change.REUSED]
    width = max((len(f.path) for f in changed), default=0)
    out += [f"  {planned.path.ljust(width)}  {planned.status}\n" for planned in changed]
    if plan.manifest_status is not FileStatus.UNCHANGED:
        out.append(f"  {layout.MANIFEST.ljust(width)}  {plan.manifest_status}\n")
    out += [f"  {layout.sealed_path(target)}  move (from {layout.sealed_path(source)})\n"
            for source, target in plan.sealed_moves]
    out += [f"  {rel.ljust(width)}  {FileStatus.DELETE}\n" for rel in plan.deletes]
    counts = {k: sum(1 for f in changed if f.status is k) for k in FileStatus}
    out.append(f"{root}: {counts[FileStatus.CREATE]} to create, {counts[FileStatus.UPDATE]} to update, "
               f"{counts[FileStatus.MODE]} to chmod, " + (f"{len(plan.deletes)} to delete, " if plan.deletes else "")
               + f"{len(plan.files) - len(changed)} unchanged\n")
    out += field_changes(plan.field_changes)
    out += [line + "\n" for line in auth_table(plan.spec, plan.decided.auth)]
    notes, warnings = _notes(plan)
    return "".join(out) + notes, warnings


def field_changes(changes: Sequence[fields.Change]) -> list[str]:
    """The spec fields changed since the last build, each with how such a change reaches the nodes."""
    if not changes:
        return []
    width = max(len(c.path) for c in changes)
    return (["spec fields changed since the last build, and how such a change reaches the nodes:\n"]
            + [f"  {c.path.ljust(width)}  {c.what}: {c.reach}: {fields.REACH_MEANING[c.reach]}\n" for c in changes])
