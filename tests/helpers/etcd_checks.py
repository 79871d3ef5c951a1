"""Checks a running etcd cluster must pass, shared by the process test and the VM test."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from generator.spec import Spec


class Etcdctl(Protocol):
    def __call__(self, *args: str, endpoints: list[str] | None = None, cert_dir: Path | None = None,
                 cert: bool = True, timeout: str = "5s") -> subprocess.CompletedProcess[str]: ...


def etcdctl_argv(binary: Path, endpoints: list[str], pki: Path, cert_dir: Path | None, cert: bool,
                 timeout: str) -> list[str]:
    """etcdctl over mutual TLS with the admin certificate of cert_dir (default: pki).

    It trusts what the build tells clients to trust: both CAs (ca-bundle.crt) while a rotation has two.
    """
    urls = ",".join(f"https://{ip}:2379" for ip in endpoints)
    trust = pki / "ca-bundle.crt" if (pki / "ca-bundle.crt").exists() else pki / "ca.crt"
    argv = [str(binary), f"--endpoints={urls}", f"--cacert={trust}", f"--dial-timeout={timeout}",
            f"--command-timeout={timeout}"]
    if cert:
        source = cert_dir or pki
        argv += [f"--cert={source / 'admin.crt'}", f"--key={source / 'admin.key'}"]
    return argv


ETCDCTL_ENV = {"ETCDCTL_API": "3", "PATH": os.environ.get("PATH", "")}


def assert_all_healthy(etcdctl: Etcdctl, count: int) -> None:
    result = etcdctl("endpoint", "health")
    assert result.returncode == 0, result.stderr
    assert (result.stdout + result.stderr).count("is healthy") == count, result.stdout + result.stderr


def assert_members_are_the_spec(etcdctl: Etcdctl, spec: Spec) -> None:
    result = etcdctl("member", "list", "-w", "json")
    assert result.returncode == 0, result.stderr
    members = sorted((m["name"], tuple(m["peerURLs"])) for m in json.loads(result.stdout)["members"])
    assert members == [(n.name, (f"https://{n.ip}:2380",)) for n in spec.nodes]


def assert_refused(etcdctl: Etcdctl, key: str, foreign_pki: Path | None = None) -> None:
    """A write without a client certificate (or with foreign_pki's) fails and leaves no trace;
    the same write with the cluster's admin certificate then succeeds."""
    result = etcdctl("put", key, "intruder", cert=foreign_pki is not None, cert_dir=foreign_pki, timeout="3s")
    assert result.returncode != 0
    assert etcdctl("get", key, "--print-value-only").stdout.strip() == ""
    assert etcdctl("put", f"{key}-admin", "welcome").returncode == 0


def all_voting(etcdctl: Etcdctl, endpoints: list[str], count: int) -> bool:
    """Whether the cluster has exactly `count` members, every one started, voting (no learner) and healthy."""
    done = etcdctl("member", "list", "-w", "json", endpoints=endpoints)
    if done.returncode != 0:
        return False
    members = json.loads(done.stdout)["members"]
    return len(members) == count and all(m.get("name") and not m.get("isLearner") for m in members) and \
        etcdctl("endpoint", "health", endpoints=endpoints).returncode == 0


def wallet(pki: Path, name: str, where: Path) -> Path:
    """A copy of an identity's certificate and key under the names etcdctl_argv uses (admin.crt, admin.key)."""
    where.mkdir(parents=True, exist_ok=True)
    shutil.copy(pki / f"{name}.crt", where / "admin.crt")
    shutil.copy(pki / f"{name}.key", where / "admin.key")
    return where


class Writer(threading.Thread):
    """Puts <prefix><n> every `interval` seconds through `put` and records each write etcd acknowledged."""

    def __init__(self, put: Callable[[str, str], bool], prefix: str, interval: float) -> None:
        super().__init__(daemon=True)
        self.put, self.prefix, self.interval = put, prefix, interval
        self.stop = threading.Event()
        self.acked: list[tuple[str, float]] = []
        self.started = time.monotonic()

    def run(self) -> None:
        for n in itertools.count(1):
            if self.stop.is_set():
                return
            key = f"{self.prefix}{n:05d}"
            if self.put(key, str(n)):
                self.acked.append((key, time.monotonic()))
            self.stop.wait(self.interval)

    def finish(self, what: str) -> None:
        """Stop writing, and print how long `what` took and the longest window with no acknowledged write."""
        self.stop.set()
        self.join(timeout=30)
        ended = time.monotonic()
        times = [self.started] + [t for _, t in self.acked] + [ended]
        gap = max(b - a for a, b in itertools.pairwise(times))
        print(f"\nbench: {what}: {ended - self.started:.1f} s; longest window with no acknowledged write: "
              f"{gap:.1f} s; {len(self.acked)} writes acknowledged")

    def assert_all_readable(self, present: set[str]) -> None:
        """Every acknowledged write is among the keys read back at the end."""
        assert self.acked and {k for k, _ in self.acked} <= present
