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

It talks to the other members over mutual TLS with the node's own certificate, which carries
clientAuth. Transient failures (no quorum yet, another learner catching up) are retried until a
deadline; one that cannot succeed (the peer URL taken by another member) stops with a message.
The data dir is never written here. Every step prints one "etcd-seed:" line.
https://etcd.io/docs/v3.5/op-guide/runtime-configuration/ and .../learning/design-learner/
"""

import json
import os
import re
import subprocess
import sys
import time

ROOT = os.environ.get("ETCD_SEED_ROOT", "")  # the tests run this in a scratch root
CONFIG = ROOT + "/etc/etcd/member.json"
# What etcd tells us goes into membership.env, which systemd reads after options.env: only values of
# the spec's own shapes may pass (a node name is a DNS label; a peer URL is https://<IPv4>:<port>).
NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
PEER_URL = re.compile(r"https://((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}"
                      r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9]):[0-9]{1,5}")


def say(message):
    print("etcd-seed: " + message, file=sys.stderr, flush=True)


class Retry(Exception):
    """Worth trying again: etcd may answer differently in a moment."""


class Refused(Exception):
    """Cannot succeed as things are: an operator must act."""


def parse_json(text, what):
    """etcdctl's JSON answer, or Refused: a member that answers garbage is not one to act on."""
    try:
        value = json.loads(text)
    except ValueError:
        raise Refused("%s gave an answer that is not JSON: %r" % (what, text[:200])) from None
    if not isinstance(value, (dict, list)):
        raise Refused("%s gave an unexpected answer: %r" % (what, text[:200]))
    return value


def checked_members(answer, what):
    """The members of an etcdctl answer, each with an integer ID, a list of peer URLs and a name (or "" while
    unstarted), all of the shapes this script writes; anything else is Refused."""
    members = answer.get("members") if isinstance(answer, dict) else None
    if not isinstance(members, list):
        raise Refused("%s gave no member list" % what)
    for m in members:
        if not isinstance(m, dict) or not isinstance(m.get("ID"), int) or isinstance(m.get("ID"), bool):
            raise Refused("%s listed a member without a numeric ID: %r" % (what, m))
        name, urls = m.get("name", ""), m.get("peerURLs", [])
        if not isinstance(name, str) or (name and not NAME.fullmatch(name)):
            raise Refused("%s listed member %x with a name that is not a node name: %r" % (what, m["ID"], name))
        if not isinstance(urls, list) or not urls or not all(isinstance(u, str) and PEER_URL.fullmatch(u)
                                                             for u in urls):
            raise Refused("%s listed member %x with peer URLs that are not https://<IPv4>:<port>: %r"
                          % (what, m["ID"], urls))
        m.setdefault("name", "")
    return members


class Member:
    def __init__(self, cfg):
        self.cfg = cfg
        self.name = cfg["name"]
        self.peer_url = cfg["peer_url"]

    def etcdctl(self, endpoints, *args):
        argv = [ROOT + self.cfg["etcdctl"], "--endpoints=" + ",".join(endpoints),
                "--cacert=" + ROOT + self.cfg["ca"], "--cert=" + ROOT + self.cfg["cert"],
                "--key=" + ROOT + self.cfg["key"], "--dial-timeout=5s", "--command-timeout=15s", *args]
        env = dict(os.environ, ETCDCTL_API="3")
        try:
            done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60, check=False)
        except subprocess.TimeoutExpired:
            return 1, "", "etcdctl %s did not answer within 60 s" % " ".join(args[:2])
        return done.returncode, done.stdout, (done.stderr.strip().splitlines() or [""])[-1]

    def members(self, endpoints):
        code, out, err = self.etcdctl(endpoints, "member", "list", "-w", "json")
        if code != 0:
            raise Retry("no member answered 'member list' (" + err + ")")
        return checked_members(parse_json(out, "member list"), "member list")

    def healthy(self, member):
        urls = member.get("clientURLs") or []
        return bool(urls) and self.etcdctl(urls, "endpoint", "health")[0] == 0

    def has_data(self):
        """A member's data: member/ in the data dir, or anything in the WAL dir but the lost+found of a
        freshly made filesystem (either may be a mount point of its own)."""
        data, wal = ROOT + self.cfg["data_dir"], ROOT + self.cfg["wal_dir"]
        return os.path.isdir(data + "/member") or (os.path.isdir(wal) and bool(set(os.listdir(wal)) - {"lost+found"}))

    def taken(self, members):
        """Refused when another node's started member holds this node's peer URL: never ours to remove."""
        for m in members:
            if self.peer_url in m["peerURLs"] and m["name"] and m["name"] != self.name:
                raise Refused("peer URL %s is taken by member %s (%x); remove it first, or give %s "
                              "another address" % (self.peer_url, m["name"], m["ID"], self.name))

    def remove_stale(self, members):
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
            raise Retry("removing the stale entry of %s would leave %d healthy of %d voting members, "
                        "fewer than the %d a quorum needs" % (self.name, healthy, len(left), need))
        for m in stale:
            code, _, err = self.etcdctl(self.cfg["peers"], "member", "remove", "%x" % m["ID"])
            if code != 0:
                raise Retry("member remove %x failed (%s)" % (m["ID"], err))
            say("removed the stale member entry %x of %s (%s); %d of %d other voting members healthy"
                % (m["ID"], self.name, ",".join(m.get("peerURLs", [])), healthy, len(left)))
        return self.members(self.cfg["peers"])

    def add(self, members):
        """This node's own learner entry: reused when a reboot came half-way, else added."""
        self.taken(members)
        for m in members:
            if m["name"] == self.name and self.peer_url not in m["peerURLs"]:
                raise Refused("%s is already a member (%x) at %s, not at %s: its address changed; mark it replace: "
                              "true in cluster.yaml and build again" % (self.name, m["ID"], ",".join(m["peerURLs"]),
                                                                        self.peer_url))
        for m in members:
            if self.peer_url in m["peerURLs"]:
                if m["name"] == self.name:
                    raise Refused("%s is already a started member (%x) but its data dir is empty: its disk "
                                  "was lost; mark it replace: true in cluster.yaml and build again"
                                  % (self.name, m["ID"]))
                say("reusing the unstarted member entry %x for %s" % (m["ID"], self.name))
                return m["ID"], members
        code, out, err = self.etcdctl(self.cfg["peers"], "member", "add", self.name,
                                      "--peer-urls=" + self.peer_url, "--learner", "-w", "json")
        if code != 0:
            if "too many learner" in err:
                raise Retry("another learner is still catching up; etcd allows one at a time")
            raise Retry("member add failed (" + err + ")")
        added = parse_json(out, "member add")
        own = added.get("member", {}).get("ID") if isinstance(added, dict) else None
        if not isinstance(own, int):
            raise Refused("member add gave no member ID: %r" % out[:200])
        say("added %s as a learner (member %x)" % (self.name, own))
        return own, checked_members(added, "member add")

    def prepare(self):
        if self.cfg.get("restore") and not os.path.isdir(ROOT + self.cfg["data_dir"] + "/member"):
            raise Refused("this seed restores a snapshot, and %s holds no restored member: etcd would start an "
                          "empty cluster; the install step's log says why the restore did not happen"
                          % self.cfg["data_dir"])
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
        with open(target + ".tmp", "w") as handle:
            handle.write(membership_env(self.name, cluster))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(target + ".tmp", target)
        say("%s starts as a learner of %s" % (self.name, cluster))
        return 0

    def own_id(self):
        """The member ID etcd on this node runs as. Not the peer URL: until prepare has removed it, the
        stale entry of a replaced node's lost incarnation has the same URL, and is a voting member."""
        code, out, err = self.etcdctl([self.cfg["client_url"]], "endpoint", "status", "-w", "json")
        if code != 0:
            raise Retry("etcd on %s does not answer yet (%s)" % (self.name, err))
        status = parse_json(out, "endpoint status")
        try:
            own = status[0]["Status"]["header"]["member_id"]
        except (KeyError, IndexError, TypeError):
            own = None
        if not isinstance(own, int):
            raise Refused("endpoint status gave no member ID: %r" % out[:200])
        return own

    def promote(self):
        if self.cfg["mode"] == "none":
            return 0
        waiting = False
        while True:
            own = self.own_id()
            mine = [m for m in self.members([self.cfg["client_url"], *self.cfg["peers"]]) if m["ID"] == own]
            if not mine:
                raise Retry("%s is not a member yet" % self.name)
            if not mine[0].get("isLearner"):
                say("%s is a voting member" % self.name)
                return 0
            code, _, err = self.etcdctl(self.cfg["peers"], "member", "promote", "%x" % mine[0]["ID"])
            if code == 0:
                say("promoted %s (member %x) to a voting member" % (self.name, mine[0]["ID"]))
                return 0
            if "not in sync" not in err:
                raise Retry("member promote failed (" + err + ")")
            if not waiting:
                say("%s is catching up with the leader before its promotion" % self.name)
                waiting = True
            time.sleep(2)


def initial_cluster(members, own, name):
    """ETCD_INITIAL_CLUSTER from checked members: this node under its own name, the others under theirs."""
    cluster = []
    for m in members:
        label = name if m["ID"] == own else (m["name"] or "unstarted-%x" % m["ID"])
        cluster += ["%s=%s" % (label, url) for url in m["peerURLs"]]
    return ",".join(cluster)


def membership_env(name, cluster):
    """membership.env's text; every value is checked again here, since systemd reads it after options.env."""
    for entry in cluster.split(","):
        label, _, url = entry.partition("=")
        if not NAME.fullmatch(label) or not PEER_URL.fullmatch(url):
            raise Refused("refusing to write %r to membership.env" % entry)
    return ("# Written by etcd-seed-member when %s joined its cluster.\n"
            "ETCD_INITIAL_CLUSTER=%s\nETCD_INITIAL_CLUSTER_STATE=existing\n" % (name, cluster))


def main(argv):
    if len(argv) != 2 or argv[1] not in ("prepare", "promote"):
        print("usage: etcd-seed-member prepare|promote", file=sys.stderr)
        return 2
    try:
        with open(CONFIG) as handle:
            member = Member(json.load(handle))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        say("ERROR: cannot read %s (%s); %s: nothing written to the data dir" % (CONFIG, exc, argv[1]))
        return 1
    step = getattr(member, argv[1])
    deadline = time.monotonic() + member.cfg["timeout_s"]
    delay, last = 2, None
    while True:
        try:
            return step()
        except Refused as exc:
            say("ERROR: %s; %s: nothing written to the data dir" % (exc, argv[1]))
            time.sleep(member.cfg["refused_pause_s"])  # systemd starts it again after this
            return 1
        except Retry as exc:
            if time.monotonic() > deadline:
                say("ERROR: %s; gave up after %ds: nothing written to the data dir" % (exc, member.cfg["timeout_s"]))
                return 1
            if str(exc) != last:
                say("waiting: %s" % exc)
                last = str(exc)
            time.sleep(delay)
            delay = min(delay * 2, 15)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
