"""Auth: etcd's users, roles and grants for a spec, as the first founder applies them.

Every certificate's CN is its etcd user (etcd's op-guide, "Using TLS Common Name"). The admin (root) and
every node hold the root role: membership changes, snapshots, defragmentation and alarms need it. Each
consumer gets a role named after it with its spec's grants; a consumer without grants gets a user and
no role. https://etcd.io/docs/v3.5/op-guide/authentication/rbac/
"""

from __future__ import annotations

from dataclasses import dataclass

from .spec import ROOT_USER, Access, Spec


@dataclass(frozen=True)
class Grant:
    """One permission of a role as etcd stores it: [key, range_end), or the key alone when range_end is empty."""

    key: str
    range_end: str
    mode: str  # read, write or readwrite

    @classmethod
    def of(cls, access: Access) -> Grant:
        return cls(access.key, prefix_end(access.key) if access.prefix else "", access.mode.value)


def prefix_end(prefix: str) -> str:
    """The end of the range of every key under `prefix`: its last character plus one (etcdctl --prefix does the
    same); the spec's keys are printable ASCII, so the result is one character of at most 0x7f."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


@dataclass(frozen=True)
class Grants:
    """Every user with its roles, and every role but root with its permissions."""

    enabled: bool
    users: dict[str, tuple[str, ...]]
    roles: dict[str, tuple[Grant, ...]]

    def to_json(self) -> dict[str, object]:
        return {"enabled": self.enabled, "users": {u: list(r) for u, r in self.users.items()},
                "roles": {name: [{"key": g.key, "range_end": g.range_end, "mode": g.mode} for g in grants]
                          for name, grants in self.roles.items()}}


def grants(spec: Spec, decision: Decision) -> Grants:
    """The users, roles and grants that a spec asks for, with auth on or off as decided."""
    root = ROOT_USER
    users: dict[str, tuple[str, ...]] = {root: (root,)}
    users |= {node.name: (root,) for node in spec.nodes}
    roles = {client.name: tuple(Grant.of(a) for a in client.access) for client in spec.clients if client.access}
    users |= {client.cn: ((client.name,) if client.access else ()) for client in spec.clients}
    return Grants(enabled=decision.on, users=dict(sorted(users.items())), roles=dict(sorted(roles.items())))


# A cluster built before auth was managed: the build leaves its users, roles and auth alone.
UNMANAGED = ("auth: left as it is on the cluster, which was built before authentication was managed (no user or role "
             "is changed, and auth stays on or off); set auth.enabled to manage it (docs/operations.md#auth)")


@dataclass(frozen=True)
class Decision:
    """auth.enabled as the build decided it. `managed` False: the build leaves etcd's users, roles and auth as the
    cluster has them (a cluster built before authentication was managed, whose spec does not set auth.enabled)."""

    enabled: bool | None  # None only when not managed
    managed: bool = True

    @property
    def on(self) -> bool:
        """Whether the seeds turn auth on."""
        return self.managed and self.enabled is not False


def decide(spec: Spec, built_before: bool, was_enabled: bool | None) -> Decision:
    """auth.enabled as the spec says; unset, on for a new cluster and as the previous build left it otherwise. A
    cluster built before auth was managed is left as it is (users and roles made by hand stay, and so does whether
    auth is on) until the spec sets auth.enabled."""
    if spec.auth.enabled is not None:
        return Decision(enabled=spec.auth.enabled)
    if not built_before:
        return Decision(enabled=True)
    if was_enabled is None:
        return Decision(enabled=None, managed=False)
    return Decision(enabled=was_enabled)


def table(spec: Spec, decision: Decision) -> list[str]:
    """What each identity may do, one line each, for `plan`."""
    if not decision.managed:
        return []  # the build's notes say so
    table = grants(spec, decision)
    lines = [f"auth: {'on' if table.enabled else 'off'} ({spec.nodes[0].name} applies these etcd users and roles)"]
    for user, roles in table.users.items():
        if ROOT_USER in roles:
            what = "root (every key, membership, snapshots, defragmentation)"
        elif roles:
            what = "; ".join(f"{g.mode} {g.key + '*' if g.range_end else g.key}" for r in roles for g in table.roles[r])
        else:
            what = "no keys"
        lines.append(f"auth: user {user}: {what}")
    return lines
