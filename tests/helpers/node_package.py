"""The node's package, templates/etcd_seed_node/, where a node has it: under a scratch root, run by the launcher
the seed puts at /usr/local/sbin/etcd-seed-member."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from etcd_seed_node import transport

from generator.paths import PATHS
from tests.helpers.specs import ROOT

PACKAGE = ROOT / "templates" / "etcd_seed_node"
LAUNCHER = ROOT / "templates" / "etcd-seed-member.py"


def install(root: Path, staged: Path | None = None) -> None:
    """Put the package under `root` as the install step does: from a seed's staged files, or else every module."""
    where = root / PATHS.node_package.lstrip("/")
    where.mkdir(parents=True, exist_ok=True)
    if staged is None:
        for module in PACKAGE.glob("*.py"):
            shutil.copy(module, where / module.name)
        return
    for module in staged.glob("etcd_seed_node.*.py"):
        shutil.copy(module, where / module.name.removeprefix("etcd_seed_node."))


def run(root: Path, job: str, launcher: Path = LAUNCHER, timeout_s: int = 30,
        command: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    """`etcd-seed-member JOB` with the package under `root` (command: a prefix such as a namespace's), with the
    flags of its #! line: -I keeps templates/ off the path, so only the package under `root` is found."""
    return subprocess.run([*(command or []), sys.executable, "-I", "-B", str(launcher), job],
                          env={**os.environ, "ETCD_SEED_ROOT": str(root)}, capture_output=True, text=True,
                          timeout=timeout_s, check=False)


class ScriptedEtcd(transport.Etcd):
    """Answers the auth job's etcdctl calls from a table, and records the calls. A user with a line break in its
    name can be made by anyone holding root; what matters here is the line the job logs about it."""

    def __init__(self, answers: dict[tuple[str, ...], str]) -> None:
        super().__init__({"name": "etcd01", "peer_url": "https://10.0.0.1:2380", "client_url": "https://10.0.0.1:2379",
                          "auth": {"enabled": True, "users": {"root": ["root"]}, "roles": {}}})
        self.answers = answers
        self.calls: list[tuple[str, ...]] = []

    def ctl(self, *args: str) -> str:
        self.calls.append(args)
        return self.answers.get(args, "")


IN_STEP: dict[tuple[str, ...], str] = {("user", "list", "-w", "json"): json.dumps({"users": ["root"]}),
           ("role", "list", "-w", "json"): json.dumps({"roles": ["root"]}),
           ("user", "get", "--", "root"): "User: root\nRoles: root\n"}
