#!/usr/bin/python3
"""etcd-seed-member: a member adds itself to a running cluster, and promotes itself, from its seed alone.

Generated: do not edit. It reads /etc/etcd/member.json, which the install step puts in place.

  prepare  (etcd.service ExecStartPre, as etcd) On a restore seed, refuse to start etcd until the
           install step has put the restored member in place. For a member marked join or replace whose data
           dir is empty: remove its stale entry (replace only, and only while the other members
           keep quorum), `member add --learner` (or reuse its own unstarted entry after a reboot
           half-way), and write the membership etcd returned to membership.env, which systemd
           reads next for ETCD_INITIAL_CLUSTER and ETCD_INITIAL_CLUSTER_STATE=existing.
  promote  (etcd-seed-promote.service, as etcd) `member promote` until etcd accepts it: etcd
           refuses while the learner has not caught up with the leader.
  defrag   (etcd-defrag.service, as etcd, at this member's own minute) Once: when every member is
           healthy and the free pages inside this member's database file are worth reclaiming,
           `defrag` this member alone; then clear a NOSPACE alarm once every member is well under its quota.
  clock    (etcd-seed-clock.service, before etcd and the backup) With network.ntp, wait until the
           kernel reports the clock synchronised, for at most clock_wait_s; succeeds either way.
  auth     (etcd-seed-auth.service, on the first node, as etcd) Once the cluster has quorum, make etcd's
           users, roles and grants those of member.json's "auth" (adding, changing and deleting), then
           turn authentication on (or off). The node's own user holds the root role, so this works
           before and after auth is on.
  report   (etcd-seed-report.service, after etcd, as etcd) Put the instance-id of the seed the install step
           last applied under member.json's "seed_key", through this node's own etcd, where
           `etcd-seed status` reads it: the node runs that seed once its etcd answers.

It talks to the other members over mutual TLS with the node's own certificate, which carries
clientAuth. Transient failures (no quorum yet, another learner catching up) are retried until a
deadline; one that cannot succeed (the peer URL taken by another member) stops with a message.
The data dir is never written here. Every step prints one "etcd-seed:" line.
https://etcd.io/docs/v3.5/op-guide/runtime-configuration/, .../learning/design-learner/ and
.../op-guide/maintenance/#defragmentation
"""

from __future__ import annotations

import base64
import ctypes
import json
import os
import re
import subprocess
import sys
import time
from typing import Any

# A member as etcdctl's JSON gives it, after checked_members; and member.json.
Record = dict[str, Any]

ROOT = os.environ.get("ETCD_SEED_ROOT", "")  # the tests run this in a scratch root
CONFIG = ROOT + "/etc/etcd/member.json"
# What etcd tells us goes into membership.env, which systemd reads after options.env: only values of
# the spec's own shapes may pass (a node name is a DNS label; a peer URL is https://<IPv4>:<port>).
NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
SEED_ID = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?-[0-9a-f]{16}")  # a node name and a digest
PEER_URL = re.compile(r"https://((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}"
                      r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9]):[0-9]{1,5}")


def say(message: str) -> None:
    print("etcd-seed: " + message, file=sys.stderr, flush=True)


class Retry(Exception):
    """Worth trying again: etcd may answer differently in a moment."""


class Refused(Exception):
    """Cannot succeed as things are: an operator must act."""


def parse_json(text: str, what: str) -> Any:
    """etcdctl's JSON answer, or Refused: a member that answers garbage is not one to act on."""
    try:
        value = json.loads(text)
    except ValueError:
        raise Refused(f"{what} gave an answer that is not JSON: {text[:200]!r}") from None
    if not isinstance(value, dict | list):
        raise Refused(f"{what} gave an unexpected answer: {text[:200]!r}")
    return value


def checked_members(answer: Any, what: str) -> list[Record]:
    """The members of an etcdctl answer, each with an integer ID, a list of peer URLs and a name (or "" while
    unstarted), all of the shapes this script writes; anything else is Refused."""
    members = answer.get("members") if isinstance(answer, dict) else None
    if not isinstance(members, list):
        raise Refused(f"{what} gave no member list")
    for m in members:
        if not isinstance(m, dict) or not isinstance(m.get("ID"), int) or isinstance(m.get("ID"), bool):
            raise Refused(f"{what} listed a member without a numeric ID: {m!r}")
        name, urls = m.get("name", ""), m.get("peerURLs", [])
        if not isinstance(name, str) or (name and not NAME.fullmatch(name)):
            raise Refused(f"{what} listed member {m['ID']:x} with a name that is not a node name: {name!r}")
        if not isinstance(urls, list) or not urls or not all(isinstance(u, str) and PEER_URL.fullmatch(u)
                                                             for u in urls):
            raise Refused(f"{what} listed member {m['ID']:x} with peer URLs that are not https://<IPv4>:<port>: "
                          f"{urls!r}")
        m.setdefault("name", "")
    return members


class Member:
    def __init__(self, cfg: Record) -> None:
        self.cfg = cfg
        self.name = cfg["name"]
        self.peer_url = cfg["peer_url"]

    def etcdctl(self, endpoints: list[str], *args: str, timeout_s: int = 15) -> tuple[int, str, str]:
        argv = [ROOT + self.cfg["etcdctl"], "--endpoints=" + ",".join(endpoints),
                "--cacert=" + ROOT + self.cfg["ca"], "--cert=" + ROOT + self.cfg["cert"],
                "--key=" + ROOT + self.cfg["key"], "--dial-timeout=5s", f"--command-timeout={timeout_s}s", *args]
        env = dict(os.environ, ETCDCTL_API="3")
        try:
            done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout_s + 45, check=False)
        except subprocess.TimeoutExpired:
            return 1, "", f"etcdctl {' '.join(args[:2])} did not answer within {timeout_s + 45} s"
        return done.returncode, done.stdout, (done.stderr.strip().splitlines() or [""])[-1]

    def members(self, endpoints: list[str]) -> list[Record]:
        code, out, err = self.etcdctl(endpoints, "member", "list", "-w", "json")
        if code != 0:
            raise Retry("no member answered 'member list' (" + err + ")")
        return checked_members(parse_json(out, "member list"), "member list")

    def healthy(self, member: Record) -> bool:
        urls = member.get("clientURLs") or []
        return bool(urls) and self.etcdctl(urls, "endpoint", "health")[0] == 0

    def has_data(self) -> bool:
        """A member's data: member/ in the data dir, or anything in the WAL dir but the lost+found of a
        freshly made filesystem (either may be a mount point of its own)."""
        data, wal = ROOT + self.cfg["data_dir"], ROOT + self.cfg["wal_dir"]
        return os.path.isdir(data + "/member") or (os.path.isdir(wal) and bool(set(os.listdir(wal)) - {"lost+found"}))

    def taken(self, members: list[Record]) -> None:
        """Refused when another node's started member holds this node's peer URL: never ours to remove."""
        for m in members:
            if self.peer_url in m["peerURLs"] and m["name"] and m["name"] != self.name:
                raise Refused(f"peer URL {self.peer_url} is taken by member {m['name']} ({m['ID']:x}); remove it "
                              f"first, or give {self.name} another address")

    def remove_stale(self, members: list[Record]) -> list[Record]:
        """Remove the entry a lost incarnation of this node left, while the others keep quorum: an entry with
        this node's name, or an unstarted one (no name yet) with its peer URL."""
        self.taken(members)
        stale = [m for m in members if m["name"] == self.name or (not m["name"] and self.peer_url in m["peerURLs"])]
        if not stale:
            return members
        voters = [m for m in members if not m.get("isLearner")]
        left = [m for m in voters if m not in stale]
        healthy = sum(1 for m in left if self.healthy(m))
        need = len(left) // 2 + 1
        if healthy < need:
            raise Retry(f"removing the stale entry of {self.name} would leave {healthy} healthy of {len(left)} "
                        f"voting members, fewer than the {need} a quorum needs")
        for m in stale:
            code, _, err = self.etcdctl(self.cfg["peers"], "member", "remove", f"{m['ID']:x}")
            if code != 0:
                raise Retry(f"member remove {m['ID']:x} failed ({err})")
            say(f"removed the stale member entry {m['ID']:x} of {self.name} ({','.join(m.get('peerURLs', []))}); "
                f"{healthy} of {len(left)} other voting members healthy")
        return self.members(self.cfg["peers"])

    def add(self, members: list[Record]) -> tuple[int, list[Record]]:
        """This node's own learner entry: reused when a reboot came half-way, else added."""
        self.taken(members)
        for m in members:
            if m["name"] == self.name and self.peer_url not in m["peerURLs"]:
                raise Refused(f"{self.name} is already a member ({m['ID']:x}) at {','.join(m['peerURLs'])}, not at "
                              f"{self.peer_url}: its address changed; mark it replace: true in cluster.yaml and "
                              "build again")
        for m in members:
            if self.peer_url in m["peerURLs"]:
                if m["name"] == self.name:
                    raise Refused(f"{self.name} is already a started member ({m['ID']:x}) but its data dir is "
                                  "empty: its disk was lost; mark it replace: true in cluster.yaml and build again")
                say(f"reusing the unstarted member entry {m['ID']:x} for {self.name}")
                return int(m["ID"]), members
        code, out, err = self.etcdctl(self.cfg["peers"], "member", "add", self.name,
                                      "--peer-urls=" + self.peer_url, "--learner", "-w", "json")
        if code != 0:
            if "too many learner" in err:
                raise Retry("another learner is still catching up; etcd allows one at a time")
            if "permission denied" in err or "user name not found" in err:
                how = (f"re-seed {self.cfg['auth_by']} (it adds the users of its seed)" if "auth_by" in self.cfg
                       else "create it by hand (the build leaves this cluster's users as they are)")
                raise Retry(f"the cluster has no etcd user {self.name} with the root role yet; {how} ({err})")
            raise Retry("member add failed (" + err + ")")
        added = parse_json(out, "member add")
        own = added.get("member", {}).get("ID") if isinstance(added, dict) else None
        if not isinstance(own, int):
            raise Refused(f"member add gave no member ID: {out[:200]!r}")
        say(f"added {self.name} as a learner (member {own:x})")
        return own, checked_members(added, "member add")

    def prepare(self) -> int:
        owner = self.cfg.get("disk_owner")
        if owner:
            try:
                with open(ROOT + owner["path"], encoding="ascii", errors="replace") as handle:
                    found = handle.read(200).split("\n", 1)[0]
            except OSError:
                found = "(no owner file)"
            if found != owner["want"]:
                raise Refused(f"the disk at {owner['path'].rsplit('/', 1)[0]} is not this member's data disk: its "
                              f"owner file says {found!r}, this member is {owner['want']!r}; the install step's log "
                              "says why")
        if self.cfg.get("restore") and not os.path.isdir(ROOT + self.cfg["data_dir"] + "/member"):
            raise Refused(f"this seed restores a snapshot, and {self.cfg['data_dir']} holds no restored member: "
                          "etcd would start an empty cluster; the install step's log says why the restore did not "
                          "happen")
        if self.cfg["mode"] == "none":
            return 0
        if self.has_data():
            return 0  # a member already: etcd reads its membership from its data
        members = self.members(self.cfg["peers"])
        if self.cfg["mode"] == "replace":
            members = self.remove_stale(members)
        own, members = self.add(members)
        cluster = initial_cluster(members, own, self.name)
        target = ROOT + self.cfg["membership_env"]
        with open(target + ".tmp", "w", encoding="utf-8") as handle:
            handle.write(membership_env(self.name, cluster))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(target + ".tmp", target)
        fsync_dir(os.path.dirname(target))  # the rename itself survives a power cut
        say(f"{self.name} starts as a learner of {cluster}")
        return 0

    def own_id(self) -> tuple[int, int | None]:
        """The member ID etcd on this node runs as, and its leader's (None while it has none). Not the peer URL:
        until prepare has removed it, the stale entry of a replaced node's lost incarnation has the same URL, and
        is a voting member."""
        code, out, err = self.etcdctl([self.cfg["client_url"]], "endpoint", "status", "-w", "json")
        if code != 0:
            raise Retry(f"etcd on {self.name} does not answer yet ({err})")
        status = parse_json(out, "endpoint status")
        try:
            own, leader = status[0]["Status"]["header"]["member_id"], status[0]["Status"].get("leader")
        except (KeyError, IndexError, TypeError, AttributeError):
            own, leader = None, None
        if not isinstance(own, int):
            raise Refused(f"endpoint status gave no member ID: {out[:200]!r}")
        return own, leader if isinstance(leader, int) and leader else None

    def leader_urls(self, members: list[Record], leader: int | None) -> list[str]:
        """Where `member promote` goes: the leader. A follower forwards it to the leader without the caller's
        identity, which etcd with auth on refuses ("auth: user name is empty", etcd-io/etcd#20757, fixed only
        in releases after 3.5.16), so through a follower a promotion would fail until the leader moved."""
        for m in members:
            urls = m.get("clientURLs")
            if m["ID"] == leader and isinstance(urls, list) and urls and \
                    all(isinstance(u, str) and PEER_URL.fullmatch(u) for u in urls):
                return urls
        return list(self.cfg["peers"])

    def promote(self) -> int:
        if self.cfg["mode"] == "none":
            return 0
        waiting = False
        while True:
            own, leader = self.own_id()
            members = self.members([self.cfg["client_url"], *self.cfg["peers"]])
            mine = [m for m in members if m["ID"] == own]
            if not mine:
                raise Retry(f"{self.name} is not a member yet")
            if not mine[0].get("isLearner"):
                say(f"{self.name} is a voting member")
                return 0
            code, _, err = self.etcdctl(self.leader_urls(members, leader), "member", "promote", f"{mine[0]['ID']:x}")
            if code == 0:
                say(f"promoted {self.name} (member {mine[0]['ID']:x}) to a voting member")
                return 0
            if "not in sync" not in err:
                raise Retry("member promote failed (" + err + ")")
            if not waiting:
                say(f"{self.name} is catching up with the leader before its promotion")
                waiting = True
            time.sleep(2)

    def sizes(self, *args: str) -> dict[str, tuple[int, int]]:
        """(file size, in use) of each member's database in bytes, by client URL: this member's, or with
        --cluster every member's. Refused unless each one answers and has a leader: `endpoint health` will not
        do, since it calls a member with an active alarm unhealthy, and NOSPACE is what a defrag may clear."""
        code, out, err = self.etcdctl([self.cfg["client_url"]], "endpoint", "status", *args, "-w", "json")
        if code != 0:
            raise Refused(f"not every member answers ({err}); a member defragments only while the others keep the "
                          "cluster available")
        sizes = {}
        for answer in parse_json(out, "endpoint status"):
            try:
                url, status = answer["Endpoint"], answer["Status"]
                size, in_use, leader = status["dbSize"], status["dbSizeInUse"], status["leader"]
            except (KeyError, TypeError):
                raise Refused(f"endpoint status gave no database sizes: {out[:200]!r}") from None
            if not all(isinstance(n, int) and n >= 0 for n in (size, in_use, leader)):
                raise Refused(f"endpoint status gave no database sizes: {out[:200]!r}")
            if not leader:
                raise Refused(f"{url} has no leader; a member defragments only in a healthy cluster")
            sizes[url] = (size, in_use)
        return sizes

    def defrag(self) -> int:
        own = self.cfg["client_url"]
        self.sizes("--cluster")
        size, in_use = self.sizes()[own]
        settings = self.cfg["defrag"]
        alarms = self.alarms()
        reason = defrag_reason(size, in_use, settings["quota_bytes"], settings["min_free_percent"],
                               settings["near_quota_percent"], nospace=NOSPACE in alarms)
        if reason is None:
            done = (f"{self.name} left alone: {mib(size - in_use)} of its {mib(size)} file is free, less than "
                    f"{settings['min_free_percent']}%")
        else:
            code, _, err = self.etcdctl([own], "defrag", timeout_s=1500)
            if code != 0:
                raise Refused(f"defrag of {self.name} failed ({err})")
            done = f"defragmented {self.name} ({reason}): {mib(size)} -> {mib(self.sizes()[own][0])}"
        say(f"defrag: {done}{self.clear_nospace(settings['quota_bytes'], alarms)}")
        return 0

    def alarms(self) -> set[object]:
        """The kinds of the cluster's active alarms (etcdserverpb.AlarmType numbers)."""
        code, out, err = self.etcdctl([self.cfg["client_url"]], "alarm", "list", "-w", "json")
        if code != 0:
            raise Refused(f"alarm list failed ({err})")
        answer = parse_json(out, "alarm list")
        alarms = answer.get("alarms") or [] if isinstance(answer, dict) else []
        return {a.get("alarm") for a in alarms if isinstance(a, dict)} or ({None} if alarms else set())

    def clear_nospace(self, quota: int, kinds: set[object]) -> str:
        """Disarm the NOSPACE alarm once every member's file is clearly under the quota (below the share the
        alerts call near), so that the next writes do not raise it again; never any other alarm (etcdctl's
        disarm clears every alarm, CORRUPT too)."""
        if not kinds:
            return ""
        if kinds != {NOSPACE}:
            return f"; alarms {sorted(map(str, kinds))} left for an operator: only NOSPACE is cleared here"
        largest = max(size for size, _ in self.sizes("--cluster").values())
        near = self.cfg["defrag"]["near_quota_percent"]
        if largest * 100 >= quota * near:
            return (f"; NOSPACE alarm left: a member's file is still {mib(largest)}, over {near}% of the "
                    f"{mib(quota)} quota (it clears once every member is below)")
        code, _, err = self.etcdctl([self.cfg["client_url"]], "alarm", "disarm")
        if code != 0:
            raise Refused(f"alarm disarm failed ({err})")
        return "; cleared the NOSPACE alarm: every member is under its quota again"


    def ctl(self, *args: str) -> str:
        """etcdctl against this member; a failure is worth a retry (no quorum yet, a leader election). Callers put
        names and keys after "--": a key such as --from-key must stay a key, not become a flag."""
        code, out, err = self.etcdctl([self.cfg["client_url"]], *args)
        if code != 0:
            raise Retry(f"etcdctl {' '.join(args[:3])} failed ({err})")
        return out

    def listed(self, kind: str) -> list[str]:
        answer = parse_json(self.ctl(kind, "list", "-w", "json"), f"{kind} list")
        names = answer.get(f"{kind}s") or [] if isinstance(answer, dict) else []
        if not all(isinstance(n, str) for n in names):
            raise Refused(f"{kind} list gave names that are not text: {names!r}")
        return list(names)

    def granted(self, role: str) -> set[tuple[str, str, str]]:
        """A role's permissions as (key, range_end, mode); etcd's JSON leaves out READ, its zero value."""
        answer = parse_json(self.ctl("role", "get", "-w", "json", "--", role), f"role get {role}")
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

    def user_roles(self, user: str) -> set[str]:
        out = self.ctl("user", "get", "--", user)
        # "User: <name>\nRoles: a b": the JSON form is not in every release's etcdctl.
        line = next((ln for ln in out.splitlines() if ln.startswith("Roles:")), "Roles:")
        return set(line.removeprefix("Roles:").split())

    def auth_plan(self, want: dict[str, Any]) -> list[tuple[tuple[str, ...], str | None]]:
        """The etcdctl calls, in order, that bring etcd's users, roles and grants to `want`, each with what the
        step reports of it (None: not news). Empty when they are as the seed has them."""
        steps: list[tuple[tuple[str, ...], str | None]] = []
        users, roles = set(self.listed("user")), set(self.listed("role"))
        for role in sorted({"root", *want["roles"]} - roles):
            steps.append((("role", "add", "--", role), f"role {role} added"))
        for role, perms in sorted(want["roles"].items()):
            have = self.granted(role) if role in roles else set()
            wanted = {(g["key"], g["range_end"], g["mode"]) for g in perms}
            for key, end, mode in sorted(wanted - have):
                steps.append((("role", "grant-permission", "--", role, mode, key, *([end] if end else [])),
                              f"{role} may {mode} {key}{'*' if end else ''}"))
            for key, end, _ in sorted(have - wanted):
                if (key, end) not in {(k, e) for k, e, _ in wanted}:  # a changed mode was replaced above
                    steps.append((("role", "revoke-permission", "--", role, key, *([end] if end else [])),
                                  f"{role} no longer has {key}{'*' if end else ''}"))
        for user, user_roles in sorted(want["users"].items()):
            if user not in users:
                steps.append((("user", "add", "--no-password", "--", user), f"user {user} added"))
            held = self.user_roles(user) if user in users else set()
            steps += [(("user", "grant-role", "--", user, role), None) for role in sorted(set(user_roles) - held)]
            steps += [(("user", "revoke-role", "--", user, role), None) for role in sorted(held - set(user_roles))]
        # Names etcd lists but the seed does not come from whoever made them: shown so that none forges a line.
        steps += [(("user", "delete", "--", user), f"user {shown(user)} deleted")
                  for user in sorted(users - set(want["users"]))]
        steps += [(("role", "delete", "--", role), f"role {shown(role)} deleted")
                  for role in sorted(roles - set(want["roles"]) - {"root"})]
        return steps

    def auth(self) -> int:
        want = self.cfg.get("auth")
        if want is None:  # this seed hands the step to another node: nothing to do here
            say("auth: this node's seed leaves etcd's users and roles to the spec's first node")
            return 0
        done: list[str] = []
        for argv, news in self.auth_plan(want):
            self.ctl(*argv)
            if news:
                done.append(news)
        # Idempotent both ways: etcd ignores enabling what is on and disabling what is off.
        self.ctl("auth", "enable" if want["enabled"] else "disable")
        state = "on" if want["enabled"] else "off"
        say(f"auth: {state}; {len(want['users'])} users and {len(want['roles'])} roles in step"
            + (f" ({'; '.join(done)})" if done else ""))
        return 0

    def report(self) -> int:
        """The seed's instance-id under this node's key, written only when the key says otherwise."""
        try:
            with open(ROOT + self.cfg["applied"], encoding="ascii") as handle:
                seed = handle.read(200).strip()
        except (OSError, ValueError) as exc:
            raise Refused(f"no record of an applied seed ({exc}); the install step writes it") from None
        if not SEED_ID.fullmatch(seed):
            raise Refused(f"{self.cfg['applied']} holds {seed[:80]!r}, not an instance-id")
        own, key = [self.cfg["client_url"]], self.cfg["seed_key"]
        want = self.cfg.get("auth")
        # On the node that applies auth, the seed runs only once etcd's users, roles and grants are as it says.
        # Whether auth is on is not asked: etcd's AuthStatus goes through raft, and a 3.4 member of a cluster being
        # upgraded cannot apply it (it crashed in tests/etcd/test_converge.py's rollback).
        if want is not None and (pending := len(self.auth_plan(want))):
            raise Retry(f"etcd's users, roles and grants are not yet as seed {seed} has them ({pending} changes to "
                        "make): etcd-seed-auth.service makes them")
        code, out, err = self.etcdctl(own, "get", key, "--print-value-only")
        if code != 0:
            raise Retry(f"etcd on {self.name} does not answer a read of {key} ({err})")
        if out.strip() == seed:
            say(f"report: {self.name} runs seed {seed} (as recorded)")
            return 0
        code, _, err = self.etcdctl(own, "put", key, seed)
        if code != 0:
            raise Retry(f"put {key} failed ({err})")
        say(f"report: {self.name} runs seed {seed}")
        return 0


# etcdserverpb.AlarmType: https://github.com/etcd-io/etcd/blob/v3.5.0/api/etcdserverpb/rpc.proto
NOSPACE = 1


def shown(name: str) -> str:
    """A name as it goes into a log line: itself when printable, else quoted with its escapes."""
    return name if name.isprintable() else repr(name)


# authpb.Permission.Type, by number, as etcdctl names them.
PERM_TYPES = {0: "read", 1: "write", 2: "readwrite"}


def defrag_reason(size: int, in_use: int, quota: int, min_free_percent: int, near_quota_percent: int,
                  nospace: bool = False) -> str | None:
    """Why this file is worth defragmenting, or None: at least min_free_percent of it free, or any of it free
    while the file is above near_quota_percent of the quota or a NOSPACE alarm stops every write (the alarm
    is cleared only once every member's file is small again)."""
    free = size - in_use
    if free <= 0:
        return None
    if free * 100 >= size * min_free_percent:
        return f"{free * 100 // size}% of it free"
    if size * 100 >= quota * near_quota_percent:
        return f"the file is at {size * 100 // quota}% of the quota"
    if nospace:
        return "a NOSPACE alarm is active"
    return None


class Timex(ctypes.Structure):
    """The head of struct timex (linux/timex.h) as adjtimex(2) fills it; the rest is spare room."""

    _fields_ = [("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
                ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long), ("status", ctypes.c_int),
                ("spare", ctypes.c_char * 512)]


# The kernel's maximum error estimate stays at this cap (16 s, in us) until a time daemon sets the clock.
UNSYNCED_MAXERROR_US = 16_000_000


def clock_synchronised() -> bool:
    """The test timedatectl's NTPSynchronized makes: adjtimex(2) with modes 0 changes nothing and reads the
    kernel's maximum error, below its 16 s cap only once a time daemon has set the clock.
    https://man7.org/linux/man-pages/man2/adjtimex.2.html"""
    timex = Timex()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.adjtimex(ctypes.byref(timex)) < 0:
        raise OSError(ctypes.get_errno(), "adjtimex")
    maxerror: int = timex.maxerror
    return maxerror < UNSYNCED_MAXERROR_US


def wait_for_clock(wait_s: int, synchronised: Any = clock_synchronised, pause_s: float = 1.0) -> int:
    """Wait at most wait_s for a synchronised clock and say how it went; a bound, so 0 either way."""
    if wait_s <= 0:
        say("clock: no time servers in the seed (network.ntp); not waiting")
        return 0
    start, asked = time.monotonic(), False
    while True:
        try:
            done = synchronised()
        except OSError as exc:
            say(f"WARNING: clock: cannot read the kernel's clock state ({exc}); not waiting")
            return 0
        waited = time.monotonic() - start
        if done:
            say(f"clock: synchronised after {waited:.0f} s; now {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}")
            return 0
        if not asked:  # on the console too: why this boot pauses here
            say(f"clock: not synchronised yet; waiting up to {wait_s} s for the time servers in network.ntp")
            asked = True
        if waited >= wait_s:
            say(f"WARNING: clock: not synchronised after {wait_s} s; starting anyway at "
                f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} (check network.ntp and the time daemon)")
            return 0
        time.sleep(pause_s)


def mib(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB" if size >= 1 << 20 else f"{size >> 10} KiB"


def initial_cluster(members: list[Record], own: int, name: str) -> str:
    """ETCD_INITIAL_CLUSTER from checked members: this node under its own name, the others under theirs."""
    cluster = []
    for m in members:
        label = name if m["ID"] == own else (m["name"] or f"unstarted-{m['ID']:x}")
        cluster += [f"{label}={url}" for url in m["peerURLs"]]
    return ",".join(cluster)


def fsync_dir(path: str) -> None:
    """Flush a directory's entries to disk."""
    handle = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def membership_env(name: str, cluster: str) -> str:
    """membership.env's text; every value is checked again here, since systemd reads it after options.env."""
    for entry in cluster.split(","):
        label, _, url = entry.partition("=")
        if not NAME.fullmatch(label) or not PEER_URL.fullmatch(url):
            raise Refused(f"refusing to write {entry!r} to membership.env")
    return (f"# Written by etcd-seed-member when {name} joined its cluster.\n"
            f"ETCD_INITIAL_CLUSTER={cluster}\nETCD_INITIAL_CLUSTER_STATE=existing\n")


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[1] not in ("prepare", "promote", "defrag", "clock", "auth", "report"):
        print("usage: etcd-seed-member prepare|promote|defrag|clock|auth|report", file=sys.stderr)
        return 2
    try:
        with open(CONFIG, encoding="utf-8") as handle:
            cfg = json.load(handle)
        if argv[1] == "clock":
            return wait_for_clock(int(cfg["clock_wait_s"]))
        member = Member(cfg)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        say(f"ERROR: cannot read {CONFIG} ({exc}); {argv[1]}: nothing written to the data dir")
        return 1
    if argv[1] == "defrag":  # once: the timer's next run is the retry
        try:
            return member.defrag()
        except (Refused, Retry) as exc:
            say(f"ERROR: defrag: {exc}")
            return 1
    step = {"prepare": member.prepare, "promote": member.promote, "auth": member.auth,
            "report": member.report}[argv[1]]
    deadline = time.monotonic() + member.cfg["timeout_s"]
    delay, last = 2, ""
    while True:
        try:
            return step()
        except Refused as exc:
            say(f"ERROR: {exc}; {argv[1]}: nothing written to the data dir")
            time.sleep(member.cfg["refused_pause_s"])  # systemd starts it again after this
            return 1
        except Retry as exc:
            if time.monotonic() > deadline:
                say(f"ERROR: {exc}; gave up after {member.cfg['timeout_s']}s: nothing written to the data dir")
                return 1
            if str(exc) != last:
                say(f"waiting: {exc}")
                last = str(exc)
            time.sleep(delay)
            delay = min(delay * 2, 15)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
