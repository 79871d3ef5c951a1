"""What every job shares: member.json, etcdctl over the node's own mutual TLS, etcd's answers checked
against the shapes the spec allows, and the two ways a step fails (Retry, Refused)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# A member as etcdctl's JSON gives it, after checked_members; and member.json.
Record = dict[str, Any]

ROOT = os.environ.get("ETCD_SEED_ROOT", "")  # the tests run the jobs in a scratch root
CONFIG = ROOT + "/etc/etcd/member.json"
# What etcd tells us goes into membership.env, which systemd reads after options.env: only values of
# the spec's own shapes may pass (a node name is a DNS label; a peer URL is https://<IPv4>:<port>).
NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
PEER_URL = re.compile(r"https://((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}"
                      r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9]):[0-9]{1,5}")

# How a job's run ends when it fails (cli.py acts on it).
UNTIL_DEADLINE = "retried until member.json's timeout_s; then systemd starts it again"
ONCE = "once: the timer's next run is the retry"
BOUNDED = "never fails: it waits at most its bound"


@dataclass(frozen=True)
class Meta:
    """What a job module declares of itself: the unit that runs it, when, and how it retries."""

    job: str  # `etcd-seed-member JOB`
    unit: str  # the systemd unit whose ExecStart (or ExecStartPre) runs it
    schedule: str
    retry: str  # UNTIL_DEADLINE, ONCE or BOUNDED
    run: Callable[[Etcd], int]


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
    unstarted), all of the shapes these jobs write; anything else is Refused."""
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


def load_config() -> Record:
    """member.json, which the install step puts in place."""
    with open(CONFIG, encoding="utf-8") as handle:
        cfg = json.load(handle)
    if not isinstance(cfg, dict):
        raise ValueError("not a JSON object")
    return cfg


class Etcd:
    """This node's etcd and its peers, reached with etcdctl and the node's own certificate (it carries
    clientAuth)."""

    def __init__(self, cfg: Record) -> None:
        self.cfg = cfg

    # Read when a job asks (the clock job needs only clock_wait_s): a missing key fails that job, by name.
    @property
    def name(self) -> str:
        return str(self.cfg["name"])

    @property
    def peer_url(self) -> str:
        return str(self.cfg["peer_url"])

    @property
    def own(self) -> list[str]:
        return [str(self.cfg["client_url"])]

    def etcdctl(self, endpoints: list[str], *args: str, timeout_s: int = 15) -> tuple[int, str, str]:
        argv = [ROOT + self.cfg["etcdctl"], "--endpoints=" + ",".join(endpoints),
                "--cacert=" + ROOT + self.cfg["ca"], "--cert=" + ROOT + self.cfg["cert"],
                "--key=" + ROOT + self.cfg["key"], "--dial-timeout=5s", f"--command-timeout={timeout_s}s", *args]
        env = dict(os.environ, ETCDCTL_API="3")
        try:
            done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout_s + 45, check=False)
        except subprocess.TimeoutExpired:
            return 1, "", f"etcdctl {' '.join(args[:2])} did not answer within {timeout_s + 45} s"
        except OSError as exc:  # not installed yet, or damaged: the install step puts it back
            return 1, "", f"cannot run {argv[0]} ({exc.strerror})"
        return done.returncode, done.stdout, (done.stderr.strip().splitlines() or [""])[-1]

    def ctl(self, *args: str) -> str:
        """etcdctl against this member; a failure is worth a retry (no quorum yet, a leader election). Callers put
        names and keys after "--": a key such as --from-key must stay a key, not become a flag."""
        code, out, err = self.etcdctl(self.own, *args)
        if code != 0:
            raise Retry(f"etcdctl {' '.join(args[:3])} failed ({err})")
        return out

    def members(self, endpoints: list[str]) -> list[Record]:
        code, out, err = self.etcdctl(endpoints, "member", "list", "-w", "json")
        if code != 0:
            raise Retry("no member answered 'member list' (" + err + ")")
        return checked_members(parse_json(out, "member list"), "member list")

    def healthy(self, member: Record) -> bool:
        urls = member.get("clientURLs") or []
        return bool(urls) and self.etcdctl(urls, "endpoint", "health")[0] == 0
