"""etcd-seed-member JOB: run one job module of this package as its META says: a step that may yet succeed
is retried until member.json's timeout_s, a scheduled one runs once. Every step prints "etcd-seed:" lines."""

from __future__ import annotations

import importlib
import os
import pkgutil
import re
import sys
import time

import etcd_seed_node
from etcd_seed_node.transport import CONFIG, ONCE, UNTIL_DEADLINE, Etcd, Meta, Refused, Retry, load_config, say

JOB = re.compile(r"[a-z]+")


def jobs() -> list[str]:
    """The jobs this node has: its seed stages only the modules of the units it runs."""
    here = [m.name for m in pkgutil.iter_modules(etcd_seed_node.__path__)]
    return sorted(name for name in here if name not in ("cli", "transport"))


def meta(job: str) -> Meta | None:
    if not JOB.fullmatch(job) or job not in jobs():
        return None
    found = getattr(importlib.import_module(f"etcd_seed_node.{job}"), "META", None)
    return found if isinstance(found, Meta) and found.job == job else None


def main(argv: list[str]) -> int:
    job = meta(argv[1]) if len(argv) == 2 else None
    if job is None:
        print(f"usage: {os.path.basename(argv[0])} {'|'.join(jobs())}", file=sys.stderr)
        return 2
    try:
        etcd = Etcd(load_config())
        timeout_s, pause_s = etcd.cfg["timeout_s"], etcd.cfg["refused_pause_s"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        say(f"ERROR: cannot read {CONFIG} ({exc}); {job.job}: nothing written to the data dir")
        return 1
    if job.retry == ONCE:
        try:
            return job.run(etcd)
        except (Refused, Retry) as exc:
            say(f"ERROR: {job.job}: {exc}")
            return 1
    if job.retry != UNTIL_DEADLINE:
        return job.run(etcd)
    deadline = time.monotonic() + timeout_s
    delay, last = 2, ""
    while True:
        try:
            return job.run(etcd)
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
