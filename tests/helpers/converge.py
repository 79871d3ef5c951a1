"""A converge lab: real etcd members in network namespaces, each converged by its real install script.

Each member has a scratch root: the files cloud-init's write_files would write are put there
from the real user-data, then the real script runs inside the member's namespace, downloads the
tarball from a web server in the hub (url mode), installs etcd and its files, and starts or
restarts etcd through helpers/systemctl_shim.py (PID 1 here is not systemd).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from generator import _cli

from . import netns
from .etcd_checks import ETCDCTL_ENV, etcdctl_argv
from .parsers import systemd_available
from .specs import ROOT, spec_yaml

BASE = "10.234.0"  # only inside the namespaces made here
HUB = f"{BASE}.254"
UPSTREAM = ROOT / "vendor" / "etcd-v3.5.1-linux-amd64.tar.gz"
DEBIAN_34 = ROOT / "vendor" / "etcd-debian-linux-amd64.tar.gz"  # Debian bookworm's 3.4.23
SHIM = Path(__file__).with_name("systemctl_shim.py")

# What a test of this tier needs; each module sets `pytestmark = NEEDS`.
NEEDS = [pytest.mark.skipif(netns.available() is not None, reason=str(netns.available())),
         pytest.mark.skipif(systemd_available() is not None, reason=str(systemd_available())),
         pytest.mark.skipif(not UPSTREAM.exists(), reason=f"make test builds vendor/{UPSTREAM.name}")]


@dataclass
class Lab:
    net: netns.TestNet
    work: Path
    shim_dir: Path
    namespaces: dict[str, str]

    @property
    def spec(self) -> Path:
        return self.work / "cluster.yaml"

    @property
    def out(self) -> Path:
        return self.work / "out" / "demo"

    def root(self, name: str) -> Path:
        return self.work / "roots" / name

    def build(self, *extra: str) -> None:
        code = _cli.main(["build", "--spec", str(self.spec), "--out", str(self.work / "out"), *extra])
        assert code == 0

    def stage(self, name: str) -> None:
        """Write what cloud-init's write_files would write from this node's user-data, under its root."""
        user_data = yaml.safe_load((self.out / name / "user-data").read_text())
        for entry in user_data["write_files"]:
            path = self.root(name) / entry["path"].lstrip("/")
            path.parent.mkdir(parents=True, exist_ok=True)
            if entry.get("encoding") == "b64":  # as cloud-init decodes it (tests/parsers/test_cloudinit.py)
                path.write_bytes(base64.b64decode(entry["content"]))
            else:
                path.write_text(entry["content"])
            path.chmod(int(entry["permissions"], 8))

    def edit_staged(self, name: str, file: str, old: str, new: str) -> None:
        """Change a staged file as a seed built with that setting would carry it: the file, and the sha256 that
        the install step checks it against."""
        staged = self.root(name) / "var/lib/etcd-seed/seed" / file
        before = hashlib.sha256(staged.read_bytes()).hexdigest()
        assert old in staged.read_text()
        staged.write_text(staged.read_text().replace(old, new))
        after = hashlib.sha256(staged.read_bytes()).hexdigest()
        script = self.root(name) / "usr/local/sbin/etcd-seed-install"
        assert f"{before}  {file}\n" in script.read_text()
        script.write_text(script.read_text().replace(f"{before}  {file}\n", f"{after}  {file}\n"))

    def converge(self, name: str, media: Path | None = None) -> str:
        """Run the node's install script as runcmd would; returns its etcd-seed line.

        media: a directory holding the seed ISO's files, for a seed that carries more than its text files.
        """
        done = self.install(name, media)
        assert done.returncode == 0, done.stderr
        return next(line for line in done.stderr.splitlines() if line.startswith("etcd-seed: applied"))

    def install(self, name: str, media: Path | None = None, *args: str, path: str | None = None,
                extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """The node's install script run as it is (args: --boot for etcd-seed-boot.service); path: PATH first."""
        script = self.root(name) / "usr/local/sbin/etcd-seed-install"
        env = {**os.environ, "ETCD_SEED_ROOT": str(self.root(name)), "ETCD_SEED_USER": "root",
               "PATH": f"{path + ':' if path else ''}{self.shim_dir}:{os.environ['PATH']}",
               **({"ETCD_SEED_MEDIA": str(media)} if media else {}), **(extra_env or {})}
        return subprocess.run(self.net.command(self.namespaces[name], ["sh", str(script), *args]), env=env,
                              capture_output=True, text=True, timeout=120, check=False)

    def calls(self, name: str) -> list[str]:
        path = self.root(name) / "run/shim/calls.log"
        return path.read_text().splitlines() if path.exists() else []

    def pid(self, name: str) -> int:
        return int((self.root(name) / "run/shim/etcd.pid").read_text())

    def etcdctl(self, *args: str, endpoints: list[str] | None = None, cert_dir: Path | None = None,
                cert: bool = True, timeout: str = "5s", stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        argv = etcdctl_argv(self.root("etcd01") / "usr/local/bin/etcdctl",
                            endpoints or [f"{BASE}.{i}" for i in (1, 2, 3)], self.out / "pki", cert_dir, cert,
                            timeout)
        return subprocess.run(self.net.command(self.net.hub, [*argv, *args]), capture_output=True, text=True,
                              env=ETCDCTL_ENV, timeout=60, check=False, input=stdin)

    def status(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The operator's `etcd-seed status`, run where the operator's machine is: the hub of the test network."""
        argv = [sys.executable, "-m", "generator", "status", "--spec", str(self.spec), "--out", str(self.out.parent),
                *args]
        return subprocess.run(self.net.command(self.net.hub, argv), capture_output=True, text=True, timeout=120,
                              check=False, cwd=ROOT)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Another command of the operator's (rotate-ca asks the cluster too), run from the hub."""
        argv = [sys.executable, "-m", "generator", *args, "--spec", str(self.spec), "--out", str(self.out.parent)]
        return subprocess.run(self.net.command(self.net.hub, argv), capture_output=True, text=True, timeout=300,
                              check=False, cwd=ROOT)

    def wait_reported(self, *names: str, timeout: float = 90) -> None:
        """Until each node's etcd-seed-report (started in the background by its install step) has put the seed
        that node applied into etcd."""
        deadline = time.monotonic() + timeout
        for name in names:
            seed = (self.root(name) / "var/lib/etcd-seed/applied").read_text().strip()
            log = self.root(name) / "run/shim/etcd-seed-report.service.log"
            while f"report: {name} runs seed {seed}" not in (log.read_text() if log.exists() else ""):
                if time.monotonic() > deadline:
                    pytest.fail(f"{name} has not reported seed {seed}:\n{self.logs()}")
                time.sleep(0.2)

    def systemctl(self, name: str, *args: str) -> subprocess.CompletedProcess[str]:
        """systemctl (the stand-in) on a node, as an operator would run it there."""
        env = {"ETCD_SEED_ROOT": str(self.root(name)), "PATH": f"{self.shim_dir}:/usr/bin:/bin"}
        return subprocess.run(self.net.command(self.namespaces[name], ["systemctl", *args]), env=env,
                              capture_output=True, text=True, timeout=1800, check=False)

    def wait_healthy(self, endpoints: list[str] | None = None, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while self.etcdctl("endpoint", "health", endpoints=endpoints).returncode != 0:
            if time.monotonic() > deadline:
                pytest.fail(f"cluster not healthy:\n{self.logs()}")
            time.sleep(0.5)

    def logs(self) -> str:
        """The tail of every member's etcd and unit logs, for a failure message."""
        return "\n".join(f"--- {p.relative_to(self.work)}\n{p.read_text(errors='replace')[-2500:]}"
                         for p in sorted(self.work.glob("roots/*/run/shim/*.log")) if p.name != "calls.log")

    def wipe(self, name: str) -> None:
        """The node's machine is gone: its etcd killed, its disk empty."""
        for pid_file in (self.root(name) / "run/shim").glob("*.pid"):
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.killpg(int(pid_file.read_text()), signal.SIGKILL)
        shutil.rmtree(self.root(name))

    def served_serial(self, ip: str, port: int, client: str) -> int:
        """The serial of the certificate etcd presents on ip:port (client: the cert/key pair offered)."""
        argv = ["openssl", "s_client", "-connect", f"{ip}:{port}", "-CAfile", str(self.out / "pki/ca.crt"),
                "-cert", str(self.out / f"pki/{client}.crt"), "-key", str(self.out / f"pki/{client}.key")]
        done = subprocess.run(self.net.command(self.net.hub, argv), input="", capture_output=True, text=True,
                              timeout=30, check=False)
        pem = done.stdout[done.stdout.index("-----BEGIN CERTIFICATE-----"):done.stdout.index(
            "-----END CERTIFICATE-----") + len("-----END CERTIFICATE-----")]
        return x509.load_pem_x509_certificate(pem.encode()).serial_number


def _kill_all(work: Path) -> None:
    for pid_file in work.glob("roots/*/run/shim/*.pid"):
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.killpg(int(pid_file.read_text()), signal.SIGKILL)


def _serve(served: Path, tarball: Path) -> tuple[str, str]:
    """Put a release tarball where the hub's web server serves it; returns its URL and sha256."""
    shutil.copy(tarball, served / tarball.name)
    return f"http://{HUB}:8080/{tarball.name}", hashlib.sha256(tarball.read_bytes()).hexdigest()


def point_at(spec_file: Path, version: str, url: str, sha: str, etcd_extra: str = "") -> None:
    """Make the spec install `version` from `url`; etcd_extra: more lines of its etcd: section."""
    text = spec_file.read_text()
    head, _, rest = text.partition("etcd:\n")
    tail = rest.split("  heartbeat_interval:", 1)[1]
    spec_file.write_text(f'{head}etcd:\n  version: "{version}"\n  url: {url}\n  sha256: \'{sha}\'\n'
                         f"{etcd_extra}  heartbeat_interval:{tail}")


@contextlib.contextmanager
def converged_lab(work: Path, tarball: Path, version: str, tag: str, extra: str = "",
                  hosts: int = 3, etcd_extra: str = "", prepare: Callable[[Lab], None] | None = None
                  ) -> Iterator[Lab]:
    """Three members converged from their seeds on `version`, the tarball served over http from the hub.

    extra: text appended to the spec; etcd_extra: lines added to its etcd: section; hosts: namespaces made
    (members beyond three join later); prepare: run on the built lab before any member converges.
    """
    served = work / "served"
    served.mkdir(parents=True)
    (work / "cluster.yaml").write_text(spec_yaml(base=BASE) + extra)
    point_at(work / "cluster.yaml", version, *_serve(served, tarball), etcd_extra=etcd_extra)
    shim_dir = work / "bin"
    shim_dir.mkdir()
    (shim_dir / "systemctl").write_text(f"#!/bin/sh\nexec {sys.executable} {SHIM} \"$@\"\n")
    (shim_dir / "systemctl").chmod(0o755)
    with netns.TestNet(tag, HUB, 24) as net:
        server = subprocess.Popen(net.command(net.hub, [sys.executable, "-m", "http.server", "--bind", HUB, "8080",
                                                        "--directory", str(served)]),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            namespaces = {f"etcd0{i}": net.add_host(i, f"{BASE}.{i}") for i in range(1, hosts + 1)}
            state = Lab(net=net, work=work, shim_dir=shim_dir, namespaces=namespaces)
            state.build()
            if prepare is not None:
                prepare(state)
            founders = ["etcd01", "etcd02", "etcd03"]
            for name in founders:
                state.stage(name)
            time.sleep(0.5)  # the web server binds
            lines = {name: state.converge(name) for name in founders}
            assert all(line.startswith(f"etcd-seed: applied etcd {version}: etcd (none) -> {version}, ")
                       and line.endswith("; started etcd") for line in lines.values()), lines
            state.wait_healthy()
            state.wait_reported(*founders)
            yield state
        finally:
            _kill_all(work)
            server.terminate()
            server.wait(timeout=10)


def killer(work: Path) -> Path:
    """A PATH directory whose mv counts its calls in `count` and, at the call numbered $KILL_AT, kills the install
    script (SIGKILL: no trap, no cleanup, as a power cut stops it) before anything is moved."""
    tools = work / "killer"
    tools.mkdir(exist_ok=True)
    count = tools / "count"
    (tools / "mv").write_text(
        f'#!/bin/sh\nn=$(($(cat {count} 2>/dev/null || echo 0) + 1))\necho $n > {count}\n'
        'if [ "$n" = "$KILL_AT" ]; then\n'
        '  pkill -KILL -f "$ETCD_SEED_ROOT/usr/local/sbin/etcd-seed-install"; kill -KILL $PPID; exit 137\nfi\n'
        'exec /bin/mv "$@"\n')
    (tools / "mv").chmod(0o755)
    return tools
