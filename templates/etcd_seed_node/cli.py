"""etcd-seed-member JOB: run one job module of this package as its META says: a step that may yet succeed
is retried until member.json's timeout_s, a scheduled one runs once. Every step prints "etcd-seed:" lines."""

from __future__ import annotations

import importlib
import os
import re
import sys
import time

import etcd_seed_node
from etcd_seed_node.transport import CONFIG, UNTIL_DEADLINE, Etcd, Meta, Refused, Retry, load_config, say

JOB = re.compile(r"[a-z]+")


def jobs() -> list[str]:
    """The jobs this node has: its seed stages only the modules of the units it runs (as source: a stray
    compiled file is no job)."""
    here = [name.removesuffix(".py") for path in etcd_seed_node.__path__ for name in os.listdir(path)
            if name.endswith(".py")]
    return sorted(name for name in here if JOB.fullmatch(name) and name not in ("cli", "transport"))


def meta(job: str) -> Meta | None:
    if not JOB.fullmatch(job) or job not in jobs():
        return None
    found = getattr(importlib.import_module(f"etcd_seed_node.{job}"), "META", None)
    return found if isinstance(found, Meta) and found.job == job else None


def attempt(job: Meta, etcd: Etcd) -> int:
    """One run of a job; member.json without what the job reads is Refused, never a traceback."""
    try:
        return job.run(etcd)
    except (KeyError, TypeError, ValueError) as exc:
        raise Refused(f"cannot read {CONFIG} ({type(exc).__name__}: {exc})") from None


def main(argv: list[str]) -> int:
    job = meta(argv[1]) if len(argv) == 2 else None
    if job is None:
        print(f"usage: {os.path.basename(argv[0])} {'|'.join(jobs())}", file=sys.stderr)
        return 2
    try:
        etcd = Etcd(load_config())
        timeout_s, pause_s = int(etcd.cfg.get("timeout_s", 0)), int(etcd.cfg.get("refused_pause_s", 0))
    except (OSError, ValueError, TypeError) as exc:
        say(f"ERROR: cannot read {CONFIG} ({exc}); {job.job}: nothing written to the data dir")
        return 1
    if job.retry != UNTIL_DEADLINE:  # once (the timer's next run is the retry), or bounded by itself
        try:
            return attempt(job, etcd)
        except (Refused, Retry) as exc:
            say(f"ERROR: {job.job}: {exc}")
            return 1
    deadline = time.monotonic() + timeout_s
    delay, last = 2, ""
    while True:
        try:
            return attempt(job, etcd)
        except Refused as exc:
            say(f"ERROR: {exc}; {job.job}: nothing written to the data dir")
            time.sleep(pause_s)  # systemd starts it again after this
            return 1
        except Retry as exc:
            if time.monotonic() > deadline:
                say(f"ERROR: {exc}; gave up after {timeout_s}s: nothing written to the data dir")
                return 1
            if str(exc) != last:
                say(f"waiting: {exc}")
                last = str(exc)
            time.sleep(delay)
            delay = min(delay * 2, 15)
