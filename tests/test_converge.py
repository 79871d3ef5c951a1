"""The generated install script converges a node to its seed, with real etcd processes in network namespaces.

Each member has a scratch root: the files cloud-init's write_files would write are
put there from the real user-data, then the real script runs inside the member's
namespace, downloads the tarball from a web server in the hub (url mode), installs
etcd and its files, and starts or restarts etcd through tests/systemctl_shim.py
(PID 1 here is not systemd). The same seed twice restarts nothing; a changed
options.env restarts once; a renewed leaf alone restarts nothing, and etcd serves
the new certificate on both ports.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from generator import _cli

from . import netns
from .conftest import ROOT, spec_yaml
from .etcd_checks import ETCDCTL_ENV, assert_all_healthy, etcdctl_argv
from .parsers import systemd_available

BASE = "10.234.0"  # only inside the namespaces made here
HUB = f"{BASE}.254"
UPSTREAM = ROOT / "vendor" / "etcd-v3.5.1-linux-amd64.tar.gz"
DEBIAN_34 = ROOT / "vendor" / "etcd-debian-linux-amd64.tar.gz"  # Debian bookworm's 3.4.23
SHIM = Path(__file__).with_name("systemctl_shim.py")

pytestmark = [pytest.mark.etcd,
              pytest.mark.skipif(netns.available() is not None, reason=str(netns.available())),
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
                cert: bool = True, timeout: str = "5s") -> subprocess.CompletedProcess[str]:
        argv = etcdctl_argv(self.root("etcd01") / "usr/local/bin/etcdctl",
                            endpoints or [f"{BASE}.{i}" for i in (1, 2, 3)], self.out / "pki", cert_dir, cert,
                            timeout)
        return subprocess.run(self.net.command(self.net.hub, [*argv, *args]), capture_output=True, text=True,
                              env=ETCDCTL_ENV, timeout=60, check=False)

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


def point_at(spec_file: Path, version: str, url: str, sha: str) -> None:
    """Make the spec install `version` from `url`."""
    text = spec_file.read_text()
    head, _, rest = text.partition("etcd:\n")
    tail = rest.split("  heartbeat_interval:", 1)[1]
    spec_file.write_text(f'{head}etcd:\n  version: "{version}"\n  url: {url}\n  sha256: \'{sha}\'\n'
                         f"  heartbeat_interval:{tail}")


@contextlib.contextmanager
def converged_lab(work: Path, tarball: Path, version: str, tag: str, extra: str = "",
                  hosts: int = 3) -> Iterator[Lab]:
    """Three members converged from their seeds on `version`, the tarball served over http from the hub.

    extra: text appended to the spec; hosts: namespaces made (members beyond three join later).
    """
    served = work / "served"
    served.mkdir(parents=True)
    (work / "cluster.yaml").write_text(spec_yaml(base=BASE) + extra)
    point_at(work / "cluster.yaml", version, *_serve(served, tarball))
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
            founders = ["etcd01", "etcd02", "etcd03"]
            for name in founders:
                state.stage(name)
            time.sleep(0.5)  # the web server binds
            lines = {name: state.converge(name) for name in founders}
            assert all(line.startswith(f"etcd-seed: applied etcd {version}: etcd (none) -> {version}, ")
                       and line.endswith("; started etcd") for line in lines.values()), lines
            state.wait_healthy()
            yield state
        finally:
            _kill_all(work)
            server.terminate()
            server.wait(timeout=10)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with converged_lab(tmp_path_factory.mktemp("converge"), UPSTREAM, "3.5.1", "cv") as state:
        yield state


def _installed(root: Path) -> dict[str, tuple[bytes, int]]:
    paths = ["usr/local/bin/etcd", "usr/local/bin/etcdctl", "etc/ssl/etcd/ca.crt", "etc/ssl/etcd/etcd.crt",
             "etc/ssl/etcd/etcd.key", "etc/etcd/options.env", "etc/systemd/system/etcd.service"]
    return {p: ((root / p).read_bytes(), (root / p).stat().st_mtime_ns) for p in paths}


def test_first_converge_forms_a_healthy_cluster(lab: Lab) -> None:
    """Three members installed and started by their own scripts form a healthy cluster over mutual TLS."""
    assert_all_healthy(lab.etcdctl, 3)
    for name in lab.namespaces:
        assert (lab.root(name) / "etc/ssl/etcd/etcd.key").stat().st_mode & 0o777 == 0o600
        assert (lab.root(name) / "var/lib/etcd-seed/version").read_text() == "3.5.1\n"


def test_same_seed_twice_changes_nothing(lab: Lab) -> None:
    """Running the script again with the same seed installs nothing and restarts nothing."""
    before = _installed(lab.root("etcd03"))
    calls, pid = lab.calls("etcd03"), lab.pid("etcd03")
    line = lab.converge("etcd03")
    assert line == "etcd-seed: applied etcd 3.5.1: nothing changed; etcd left running"
    assert _installed(lab.root("etcd03")) == before
    assert lab.pid("etcd03") == pid
    new_calls = lab.calls("etcd03")[len(calls):]
    # etcd03 has no flannel unit: no start of any kind.
    assert not [c for c in new_calls if c.startswith(("start", "restart", "daemon-reload"))], new_calls


def test_changed_options_restart_once(lab: Lab) -> None:
    """A changed heartbeat reaches options.env; the script restarts etcd exactly once, and etcd runs with it."""
    lab.spec.write_text(lab.spec.read_text().replace("heartbeat_interval: 100", "heartbeat_interval: 150"))
    lab.build()
    lab.stage("etcd01")
    calls, pid = lab.calls("etcd01"), lab.pid("etcd01")
    line = lab.converge("etcd01")
    assert line == "etcd-seed: applied etcd 3.5.1: options.env; restarted etcd"
    new_calls = lab.calls("etcd01")[len(calls):]
    assert [c for c in new_calls if c.endswith(" etcd.service") and c.startswith(("start", "restart"))] == \
        ["restart etcd.service"]
    assert lab.pid("etcd01") != pid
    environ = Path(f"/proc/{lab.pid('etcd01')}/environ").read_bytes().split(b"\0")
    assert b"ETCD_HEARTBEAT_INTERVAL=150" in environ
    lab.wait_healthy()
    for name in ("etcd02", "etcd03"):  # roll the rest, one at a time
        lab.stage(name)
        assert lab.converge(name).endswith("; restarted etcd")
        lab.wait_healthy()
    assert_all_healthy(lab.etcdctl, 3)


def test_renewed_leaf_is_served_without_a_restart(lab: Lab) -> None:
    """A renewed certificate alone restarts nothing; etcd presents it on 2379 and 2380 at the next handshake."""
    old = lab.served_serial(f"{BASE}.2", 2379, "admin")
    lab.build("--renew")
    new = x509.load_pem_x509_certificates((lab.out / "pki/etcd02.crt").read_bytes())[0].serial_number
    assert new != old
    lab.stage("etcd02")
    calls, pid = lab.calls("etcd02"), lab.pid("etcd02")
    line = lab.converge("etcd02")
    assert line.startswith("etcd-seed: applied etcd 3.5.1: ") and "etcd.crt" in line
    assert line.endswith("; etcd left running: it reloads its certificate on the next handshake")
    assert "options.env" not in line and "ca.crt" not in line
    assert lab.pid("etcd02") == pid
    assert not [c for c in lab.calls("etcd02")[len(calls):] if c.startswith(("start", "restart"))]  # no flannel here
    assert lab.served_serial(f"{BASE}.2", 2379, "admin") == new
    assert lab.served_serial(f"{BASE}.2", 2380, "etcd01") == new
    assert_all_healthy(lab.etcdctl, 3)


def test_ssl_module_agrees_on_the_ca(lab: Lab) -> None:
    """The CA the nodes trust is the one pki/ca.crt holds (guards the serial checks above)."""
    context = ssl.create_default_context(cafile=str(lab.out / "pki/ca.crt"))
    assert context.cert_store_stats()["x509_ca"] == 1
    assert (lab.root("etcd02") / "etc/ssl/etcd/ca.crt").read_bytes() == (lab.out / "pki/ca.crt").read_bytes()


def _readme_block(heading: str) -> str:
    """The first sh block of the README section under `heading`."""
    text = (ROOT / "README.md").read_text().split(heading, 1)[1]
    return text.split("```sh\n", 1)[1].split("```", 1)[0]


def _run_as_written(lab: Lab, block: str) -> subprocess.CompletedProcess[str]:
    """A README block's lines run by sh as an operator would type them, from the hub with etcdctl on PATH. Only the
    example's addresses and output path are swapped for the lab's; `python -m generator` lines are left out."""
    lines = [line for line in block.splitlines() if line.strip() and not line.startswith(("#", "python -m"))]
    script = "\n".join(lines).replace("output/demo", str(lab.out)).replace("192.168.0.", f"{BASE}.")
    env = {"PATH": f"{lab.root('etcd01') / 'usr/local/bin'}:/usr/bin:/bin", "HOME": str(lab.work)}
    return subprocess.run(lab.net.command(lab.net.hub, ["sh", "-ec", script]), cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def test_readme_day2_commands_run_as_written(lab: Lab) -> None:
    """The README's day-2 routine (find the leader, then check the rolled member) runs against real etcd as written:
    etcdctl 3.5 refuses a flag that shadows a variable etcdctl.env sets."""
    done = _run_as_written(lab, _readme_block("### Day 2"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "IS LEADER" in done.stdout and f"https://{BASE}.1:2379 is healthy" in done.stdout + done.stderr


def _tripwire(work: Path) -> Path:
    """A PATH directory whose curl and wget only record that they were called: the boot step must download nothing
    when what is installed matches its record."""
    bin_dir = work / "tripwire"
    bin_dir.mkdir(exist_ok=True)
    for tool in ("curl", "wget"):
        (bin_dir / tool).write_text(f"#!/bin/sh\necho {tool} >> {bin_dir}/called\nexit 7\n")
        (bin_dir / tool).chmod(0o755)
    (bin_dir / "called").unlink(missing_ok=True)
    return bin_dir


def _shim(lab: Lab, name: str, *argv: str) -> None:
    """systemctl on the node, as an operator (or systemd at boot) would run it."""
    env = {"ETCD_SEED_ROOT": str(lab.root(name)), "PATH": f"{lab.shim_dir}:/usr/bin:/bin"}
    subprocess.run(lab.net.command(lab.namespaces[name], ["systemctl", *argv]), env=env, check=True, timeout=60)


def test_boot_with_the_same_seed_downloads_nothing_and_leaves_the_start_to_systemd(lab: Lab) -> None:
    """etcd-seed-boot.service runs the install step before etcd.service on every boot. With the seed already applied
    it checks the installed binaries against its record instead of fetching the tarball, changes nothing, and
    starts nothing: etcd.service starts after it."""
    tripwire = _tripwire(lab.work)
    before = _installed(lab.root("etcd03"))
    _shim(lab, "etcd03", "stop", "etcd.service")  # powered off: etcd is not running when the boot step runs
    calls = lab.calls("etcd03")
    done = lab.install("etcd03", None, "--boot", path=str(tripwire))
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines()[-1] == "etcd-seed: applied etcd 3.5.1: nothing changed; etcd starts next"
    assert not (tripwire / "called").exists()
    assert _installed(lab.root("etcd03")) == before
    assert not [c for c in lab.calls("etcd03")[len(calls):] if c.startswith(("start", "restart"))]
    _shim(lab, "etcd03", "start", "etcd.service")
    lab.wait_healthy()


def test_power_loss_damage_is_repaired_at_boot(lab: Lab) -> None:
    """A power cut right after a rename can leave a file empty (ext4 keeps the rename, not the unflushed data): the
    boot step finds the etcd binary and the unit that differ from the record and the seed, and puts them back."""
    root = lab.root("etcd02")
    before = _installed(root)
    _shim(lab, "etcd02", "stop", "etcd.service")
    for rel in ("usr/local/bin/etcd", "etc/systemd/system/etcd.service"):
        (root / rel).write_bytes(b"")
    done = lab.install("etcd02", None, "--boot")
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines()[-1] == \
        "etcd-seed: applied etcd 3.5.1: etcd 3.5.1 binaries repaired, etcd.service; etcd starts next"
    assert {k: v[0] for k, v in _installed(root).items()} == {k: v[0] for k, v in before.items()}
    _shim(lab, "etcd02", "start", "etcd.service")
    lab.wait_healthy()
    assert_all_healthy(lab.etcdctl, 3)


def test_damaged_staged_file_is_never_installed(lab: Lab) -> None:
    """A staged file that is not what the build wrote (cloud-init cut short by a power loss) stops the install step
    with an ERROR before anything is installed; etcd keeps running on what it had."""
    root = lab.root("etcd01")
    before, pid = _installed(root), lab.pid("etcd01")
    staged = root / "var/lib/etcd-seed/seed/options.env"
    good = staged.read_bytes()
    staged.write_bytes(b"")
    try:
        done = lab.install("etcd01")
    finally:
        staged.write_bytes(good)
    assert done.returncode == 1
    assert "etcd-seed: ERROR: the staged seed files in /var/lib/etcd-seed/seed are damaged or missing (options.env" \
        in done.stderr, done.stderr
    assert "nothing installed or changed" in done.stderr and "Traceback" not in done.stderr
    assert _installed(root) == before and lab.pid("etcd01") == pid


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


def test_install_killed_before_any_rename_is_continued(lab: Lab) -> None:
    """A node's first install, killed (SIGKILL, as a power cut would stop it) just before each of its renames in
    turn: the next run always finishes it, and etcd is started only by a run that completed."""
    root = lab.root("etcd03")
    expected = {k: v[0] for k, v in _installed(root).items()}
    fresh = ["usr/local/bin", "etc/ssl/etcd", "etc/etcd", "etc/systemd/system", "var/lib/etcd-seed/installed.sha256",
             "var/lib/etcd-seed/version"]
    tools = killer(lab.work)
    count = tools / "count"
    def fresh_run(kill_at: int) -> subprocess.CompletedProcess[str]:
        _shim(lab, "etcd03", "stop", "etcd.service")
        for rel in fresh:
            target = root / rel
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
        count.unlink(missing_ok=True)
        return lab.install("etcd03", None, path=str(tools), extra_env={"KILL_AT": str(kill_at)})

    counted = fresh_run(0)  # no kill: counts the renames of a first install
    assert counted.returncode == 0 and counted.stderr.splitlines()[-1].endswith("; started etcd"), counted.stderr
    renames = int(count.read_text())
    for kill_at in range(1, renames + 1):
        killed = fresh_run(kill_at)
        assert killed.returncode != 0 and "etcd-seed: applied" not in killed.stderr, (kill_at, killed.stderr)
        assert lab.calls("etcd03")[-1] == "stop etcd.service", kill_at  # the killed run started nothing
        line = lab.converge("etcd03")
        assert line.endswith("; started etcd"), (kill_at, line)
        assert {k: v[0] for k, v in _installed(root).items()} == expected, kill_at
    print(f"\nbench: first install killed before each of its {renames} renames, and continued each time")
    assert renames >= 15
    lab.wait_healthy()
    assert_all_healthy(lab.etcdctl, 3)


def _note_command(lab: Lab, note: str, start: str, end: str) -> subprocess.CompletedProcess[str]:
    """The command a build note prints between `start` and `end`, run as written from pki/ in the hub."""
    command = note.split(start, 1)[1].split(end, 1)[0]
    env = {"PATH": f"{lab.root('etcd01') / 'usr/local/bin'}:/usr/bin:/bin"}
    deadline = time.monotonic() + 30
    while True:
        done = subprocess.run(lab.net.command(lab.net.hub, ["sh", "-ec", command]), cwd=lab.out / "pki", env=env,
                              capture_output=True, text=True, timeout=60, check=False)
        # etcd refuses membership changes until every member has been connected for a few seconds.
        if "unhealthy cluster" not in done.stderr or time.monotonic() > deadline:
            return done
        time.sleep(1)


def _build_out(lab: Lab) -> str:
    out = io.StringIO()
    assert _cli.main(["build", "--spec", str(lab.spec), "--out", str(lab.work / "out")], out, io.StringIO()) == 0
    return out.getvalue()


def test_build_notes_run_as_written(lab: Lab) -> None:
    """The commands the build prints for a join by hand and for a changed address run against real etcd as
    printed (and are undone here, so that the lab stays as it was)."""
    spec = lab.spec.read_text()
    line = next(x for x in spec.splitlines() if "name: etcd03" in x)
    try:
        lab.spec.write_text(spec.replace(line, line + f'\n  - {{name: etcd04, ip: {BASE}.4, '
                                                     'mac: "52:54:00:00:00:04", join: true}'))
        note = next(x for x in _build_out(lab).splitlines() if x.startswith("etcd04 joins the running cluster"))
        done = _note_command(lab, note, "by hand instead, from pki/, run: ", ", and once it has caught up")
        assert done.returncode == 0, done.stderr
        added = [m for m in json.loads(lab.etcdctl("member", "list", "-w", "json").stdout)["members"]
                 if f"https://{BASE}.4:2380" in m["peerURLs"]]
        assert len(added) == 1 and added[0].get("isLearner") is True, added
        assert lab.etcdctl("member", "remove", f"{added[0]['ID']:x}").returncode == 0

        lab.spec.write_text(spec.replace(f"ip: {BASE}.3,", f"ip: {BASE}.7,"))
        note = next(x for x in _build_out(lab).splitlines() if x.startswith("etcd03's address changed"))
        done = _note_command(lab, note, "from pki/, run: ", " ; or mark it replace")
        assert done.returncode == 0, done.stderr
        urls = {m["name"]: m["peerURLs"] for m in json.loads(lab.etcdctl("member", "list", "-w", "json").stdout)
                ["members"]}
        assert urls["etcd03"] == [f"https://{BASE}.7:2380"], urls
    finally:
        lab.spec.write_text(spec)
        _build_out(lab)
        etcd03 = next(m for m in json.loads(lab.etcdctl("member", "list", "-w", "json").stdout)["members"]
                      if m["name"] == "etcd03")
        assert lab.etcdctl("member", "update", f"{etcd03['ID']:x}",
                           f"--peer-urls=https://{BASE}.3:2380").returncode == 0
    lab.wait_healthy()


@pytest.mark.skipif(not DEBIAN_34.exists(), reason=f"make test builds vendor/{DEBIAN_34.name} with apt-get download")
def test_rollback_of_an_unfinished_upgrade(tmp_path: Path) -> None:
    """One member upgraded 3.4 -> 3.5 while the others stay on 3.4, then rolled back with --allow-downgrade:
    the install step swaps the binary back, the member rejoins, and no write is lost."""
    old = tmp_path / "etcd-v3.4.23-linux-amd64.tar.gz"
    shutil.copy(DEBIAN_34, old)
    with converged_lab(tmp_path / "lab", old, "3.4.23", "rb") as state:
        assert state.etcdctl("put", "before", "1").returncode == 0
        point_at(state.spec, "3.5.1", *_serve(state.work / "served", UPSTREAM))
        state.build()
        state.stage("etcd01")
        up = state.converge("etcd01")
        assert up.startswith("etcd-seed: applied etcd 3.5.1: etcd 3.4.23 -> 3.5.1, ")
        assert up.endswith("; restarted etcd")
        state.wait_healthy()
        assert state.etcdctl("put", "mixed", "2").returncode == 0
        versions = json.loads(state.etcdctl("endpoint", "status", "-w", "json").stdout)
        assert sorted(v["Status"]["version"] for v in versions) == ["3.4.23", "3.4.23", "3.5.1"]

        point_at(state.spec, "3.4.23", *_serve(state.work / "served", old))
        refused = _cli.main(["build", "--spec", str(state.spec), "--out", str(state.work / "out")])
        assert refused == 1
        state.build("--allow-downgrade")
        state.stage("etcd01")
        down = state.converge("etcd01")
        assert down.startswith("etcd-seed: applied etcd 3.4.23: etcd 3.5.1 -> 3.4.23, ") and down.endswith(
            "; restarted etcd")
        state.wait_healthy()
        versions = json.loads(state.etcdctl("endpoint", "status", "-w", "json").stdout)
        assert sorted(v["Status"]["version"] for v in versions) == ["3.4.23"] * 3
        for key, value in (("before", "1"), ("mixed", "2")):
            got = state.etcdctl("get", "--consistency=s", "--print-value-only", key, endpoints=[f"{BASE}.1"])
            assert got.stdout.strip() == value
