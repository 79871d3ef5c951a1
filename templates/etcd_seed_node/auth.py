"""auth: on the spec's first node, once the cluster has quorum, make etcd's users, roles and grants those of
member.json's "auth" (adding, changing and deleting), then turn authentication on (or off). The node's own
user holds the root role, so this works before and after auth is on.
https://etcd.io/docs/v3.5/op-guide/authentication/rbac/
"""

from __future__ import annotations

import base64
from typing import Any

from etcd_seed_node.transport import UNTIL_DEADLINE, Etcd, Meta, Refused, parse_json, say

# authpb.Permission.Type, by number, as etcdctl names them.
PERM_TYPES = {0: "read", 1: "write", 2: "readwrite"}


def shown(name: str) -> str:
    """A name as it goes into a log line: itself when printable, else quoted with its escapes."""
    return name if name.isprintable() else repr(name)


def listed(etcd: Etcd, kind: str) -> list[str]:
    answer = parse_json(etcd.ctl(kind, "list", "-w", "json"), f"{kind} list")
    names = answer.get(f"{kind}s") or [] if isinstance(answer, dict) else []
    if not all(isinstance(n, str) for n in names):
        raise Refused(f"{kind} list gave names that are not text: {names!r}")
    return list(names)


def granted(etcd: Etcd, role: str) -> set[tuple[str, str, str]]:
    """A role's permissions as (key, range_end, mode); etcd's JSON leaves out READ, its zero value."""
    answer = parse_json(etcd.ctl("role", "get", "-w", "json", "--", role), f"role get {role}")
    perms = answer.get("perm") or [] if isinstance(answer, dict) else []
    have = set()
    for perm in perms:
        try:
            key = base64.b64decode(perm.get("key", "")).decode()
            end = base64.b64decode(perm.get("range_end", "")).decode()
            mode = PERM_TYPES[perm.get("permType", 0)]
        except (ValueError, KeyError, AttributeError, TypeError):
            raise Refused(f"role get {role} gave a permission this step cannot read: {perm!r}") from None
        have.add((key, end, mode))
    return have


def user_roles(etcd: Etcd, user: str) -> set[str]:
    out = etcd.ctl("user", "get", "--", user)
    # "User: <name>\nRoles: a b": the JSON form is not in every release's etcdctl.
    line = next((ln for ln in out.splitlines() if ln.startswith("Roles:")), "Roles:")
    return set(line.removeprefix("Roles:").split())


def plan(etcd: Etcd, want: dict[str, Any]) -> list[tuple[tuple[str, ...], str | None]]:
    """The etcdctl calls, in order, that bring etcd's users, roles and grants to `want`, each with what the
    step reports of it (None: not news). Empty when they are as the seed has them."""
    steps: list[tuple[tuple[str, ...], str | None]] = []
    users, roles = set(listed(etcd, "user")), set(listed(etcd, "role"))
    for role in sorted({"root", *want["roles"]} - roles):
        steps.append((("role", "add", "--", role), f"role {role} added"))
    for role, perms in sorted(want["roles"].items()):
        have = granted(etcd, role) if role in roles else set()
        wanted = {(g["key"], g["range_end"], g["mode"]) for g in perms}
        for key, end, mode in sorted(wanted - have):
            steps.append((("role", "grant-permission", "--", role, mode, key, *([end] if end else [])),
                          f"{role} may {mode} {key}{'*' if end else ''}"))
        for key, end, _ in sorted(have - wanted):
            if (key, end) not in {(k, e) for k, e, _ in wanted}:  # a changed mode was replaced above
                steps.append((("role", "revoke-permission", "--", role, key, *([end] if end else [])),
                              f"{role} no longer has {key}{'*' if end else ''}"))
    for user, roles_wanted in sorted(want["users"].items()):
        if user not in users:
            steps.append((("user", "add", "--no-password", "--", user), f"user {user} added"))
        held = user_roles(etcd, user) if user in users else set()
        steps += [(("user", "grant-role", "--", user, role), None) for role in sorted(set(roles_wanted) - held)]
        steps += [(("user", "revoke-role", "--", user, role), None) for role in sorted(held - set(roles_wanted))]
    # Names etcd lists but the seed does not come from whoever made them: shown so that none forges a line.
    steps += [(("user", "delete", "--", user), f"user {shown(user)} deleted")
              for user in sorted(users - set(want["users"]))]
    steps += [(("role", "delete", "--", role), f"role {shown(role)} deleted")
              for role in sorted(roles - set(want["roles"]) - {"root"})]
    return steps


def auth(etcd: Etcd) -> int:
    want = etcd.cfg.get("auth")
    if want is None:  # this seed hands the step to another node: nothing to do here
        say("auth: this node's seed leaves etcd's users and roles to the spec's first node")
        return 0
    done: list[str] = []
    for argv, news in plan(etcd, want):
        etcd.ctl(*argv)
        if news:
            done.append(news)
    # Idempotent both ways: etcd ignores enabling what is on and disabling what is off.
    etcd.ctl("auth", "enable" if want["enabled"] else "disable")
    state = "on" if want["enabled"] else "off"
    say(f"auth: {state}; {len(want['users'])} users and {len(want['roles'])} roles in step"
        + (f" ({'; '.join(done)})" if done else ""))
    return 0


META = Meta(job="auth", unit="etcd-seed-auth.service", schedule="after etcd, on the spec's first node, after "
            "each new seed", retry=UNTIL_DEADLINE, run=auth)
