"""Trust on real etcd processes: a three-phase CA rotation with no lost write, and consumers' certificates.

Three members in network namespaces (tests/helpers/converge.py) are converged from their
seeds. Each phase is a build (`rotate-ca begin|issue|finish`), then each member in turn is converged
to its regenerated files by the generated install script, while a writer puts a numbered key every
0.2 s through all endpoints. In phases 1 and 3 the script restarts etcd itself (the trusted-CA file
changed); in phase 2 each member is stopped first, as a reboot with the new seed would do. The
writer trusts both CAs once there are two, and switches to the new admin certificate once phase 2
has issued it: what a consumer is told to do.

flanneld itself cannot be installed here, so its certificate is tried with etcdctl on exactly
what flannel (v0.18+, etcd v3 API) does: read <prefix>/config, and lease a subnet under
<prefix>/subnets/ and keep the lease alive.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from cryptography import x509

from generator.render import FLANNEL_KEY
from tests.helpers.converge import BASE, NEEDS, SHIM, UPSTREAM, Lab, converged_lab
from tests.helpers.etcd_checks import ETCDCTL_ENV, Writer
from tests.helpers.parsers import systemd_env

pytestmark = NEEDS

MEMBERS = ("etcd01", "etcd02", "etcd03")
ENDPOINTS = [f"{BASE}.{i}" for i in (1, 2, 3)]


def _creds(lab: Lab, name: str, ca_file: str) -> Path:
    """A frozen copy of a CA file and the admin pair as they are now in pki/."""
    where = lab.work / "creds" / name
    where.mkdir(parents=True)
    pki = lab.out / "pki"
    shutil.copy(pki / ca_file, where / "ca.crt")
    shutil.copy(pki / "admin.crt", where / "admin.crt")
    shutil.copy(pki / "admin.key", where / "admin.key")
    return where


def _etcdctl(lab: Lab, creds: Path, *args: str, endpoints: list[str] | None = None,
             timeout: str = "2s") -> subprocess.CompletedProcess[str]:
    urls = ",".join(f"https://{ip}:2379" for ip in endpoints or ENDPOINTS)
    argv = [str(lab.root("etcd01") / "usr/local/bin/etcdctl"), f"--endpoints={urls}", f"--cacert={creds / 'ca.crt'}",
            f"--cert={creds / 'admin.crt'}", f"--key={creds / 'admin.key'}", f"--dial-timeout={timeout}",
            f"--command-timeout={timeout}", *args]
    return subprocess.run(lab.net.command(lab.net.hub, argv), capture_output=True, text=True, env=ETCDCTL_ENV,
                          timeout=60, check=False)


def _accepted(lab: Lab, creds: Path) -> list[bool]:
    """Whether each member, asked alone, serves a client with these credentials."""
    return [_etcdctl(lab, creds, "endpoint", "health", endpoints=[ip], timeout="3s").returncode == 0
            for ip in ENDPOINTS]


def _trusted(lab: Lab) -> list[int]:
    """How many CA certificates each member's installed trusted-CA file holds."""
    return [(lab.root(name) / "etc/ssl/etcd/ca.crt").read_text().count("BEGIN CERTIFICATE") for name in MEMBERS]


def _wait(what: str, check: object, lab: Lab, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{lab.logs()}")
        time.sleep(0.2)


def _roll(lab: Lab, creds: Path, phase: int, reboot: bool) -> list[str]:
    """Apply each member's new seed, one at a time; quorum holds throughout.

    reboot: stop etcd first, as a reboot does; else the install script alone decides whether to restart it.
    """
    lines = []
    for name in MEMBERS:
        others = [ip for ip, member in zip(ENDPOINTS, MEMBERS, strict=True) if member != name]
        if reboot:
            env = {**os.environ, "ETCD_SEED_ROOT": str(lab.root(name))}
            subprocess.run([sys.executable, str(SHIM), "stop", "etcd.service"], env=env, check=True)
            health = _etcdctl(lab, creds, "endpoint", "health", endpoints=others, timeout="5s")
            assert health.returncode == 0, f"phase {phase}: quorum lost with {name} down: {health.stderr}"
        lab.stage(name)
        lines.append(lab.converge(name))
        _wait(f"{name} healthy again in phase {phase}", lambda: _etcdctl(
            lab, creds, "endpoint", "health", timeout="3s").returncode == 0, lab)
        lab.wait_reported(name)
    return lines


def _step(lab: Lab, step: str) -> str:
    """The rotation step as an operator takes it, from the hub: issue and finish ask the cluster first."""
    done = lab.cli("rotate-ca", step)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _refused_until_rolled(lab: Lab, step: str, phase: str) -> None:
    """Before a phase's seeds are rolled, status names a node to roll and the next step is refused, naming every
    node and writing nothing; both passed before each node reported the seed it runs."""
    status = lab.status()
    print(f"status after the {phase} build, before any roll:\n{status.stdout}")
    assert status.returncode == 1 and "next: nothing to roll" not in status.stdout, status.stdout
    assert [line.split()[-1] for line in status.stdout.splitlines()[1:4]] == ["behind"] * 3, status.stdout
    before = {p: p.read_bytes() for p in lab.out.rglob("*") if p.is_file()}
    done = lab.cli("rotate-ca", step)
    print(done.stderr)
    assert done.returncode == 1 and done.stderr.startswith(f"error: rotate-ca {step}: not every node runs the seed "
                                                           f"of the phase before ({phase}): "), done.stderr
    assert all(f"{name} behind (" in done.stderr and f"runs seed {name}-" in done.stderr for name in MEMBERS), \
        done.stderr
    assert len(done.stderr.splitlines()) == 1
    assert {p: p.read_bytes() for p in lab.out.rglob("*") if p.is_file()} == before


def test_three_phase_rotation_keeps_every_write(tmp_path: Path) -> None:
    with converged_lab(tmp_path / "lab", UPSTREAM, "3.5.1", "rc") as lab:
        members_before = _etcdctl(lab, _creds(lab, "start", "ca.crt"), "member", "list").stdout
        creds = {"now": _creds(lab, "old", "ca.crt")}  # what the writer uses; switched as a consumer would
        writer = Writer(lambda key, value: _etcdctl(lab, creds["now"], "put", key, value).returncode == 0, "rot/", 0.2)
        writer.start()
        try:
            # Phase 1: trust both. The old admin keeps working everywhere, before and after each restart.
            assert "phase 1 of 3" in _step(lab, "begin")
            _refused_until_rolled(lab, "issue", "trust both CAs")
            both = _creds(lab, "old-trusting-both", "ca-bundle.crt")  # the old admin, trusting both CAs
            creds["now"] = both
            # The install script alone restarts etcd: the trusted-CA file changed, and etcd reads it only at start.
            lines = _roll(lab, both, 1, reboot=False)
            assert all(line.startswith("etcd-seed: applied etcd 3.5.1: ca.crt") and line.endswith("; restarted etcd")
                       for line in lines), lines
            assert _accepted(lab, both) == [True] * 3
            assert _trusted(lab) == [2] * 3

            # Phase 2: issue from the new CA. The new admin is accepted at once (every member trusts both).
            assert "phase 2 of 3" in _step(lab, "issue")
            _refused_until_rolled(lab, "finish", "issue from the new CA")
            new = _creds(lab, "new", "ca-bundle.crt")
            assert _accepted(lab, new) == [True] * 3
            creds["now"] = new
            lines = _roll(lab, new, 2, reboot=True)
            assert all(line.endswith("; started etcd") and "ca.crt" not in line for line in lines), lines
            assert _accepted(lab, both) == [True] * 3, "the old admin must work until phase 3"
            assert _accepted(lab, new) == [True] * 3
            assert _trusted(lab) == [2] * 3
            for name, ip in zip(MEMBERS, ENDPOINTS, strict=True):  # each serves the certificate of the new CA
                issued = x509.load_pem_x509_certificates((lab.out / "pki" / f"{name}.crt").read_bytes())[0]
                assert lab.served_serial(ip, 2379, "admin") == issued.serial_number, name

            # Phase 3: trust only the new CA. Each restarted member refuses the old admin from then on.
            assert lab.status().stdout.count(" in step\n") == 3
            assert "phase 3 of 3" in _step(lab, "finish")
            lines = _roll(lab, new, 3, reboot=False)
            assert all("ca.crt" in line and line.endswith("; restarted etcd") for line in lines), lines
            assert _accepted(lab, new) == [True] * 3
            assert _trusted(lab) == [1] * 3
            assert _accepted(lab, both) == [False] * 3, "the old admin must be refused after phase 3"
            refused = _etcdctl(lab, both, "get", "rot/00001", timeout="3s")
            assert refused.returncode != 0 and "certificate" in refused.stderr.lower(), refused.stderr
        finally:
            writer.finish("three-phase CA rotation over 3 members")
        final = _creds(lab, "final", "ca.crt")
        writer.assert_all_readable(set(_etcdctl(lab, final, "get", "rot/", "--prefix", "--keys-only",
                                                timeout="5s").stdout.split()))
        assert _etcdctl(lab, final, "member", "list").stdout == members_before  # the same members, never re-added


CONSUMERS = """clients:
  - {name: kube-apiserver, use: kube-apiserver, cn: kube-apiserver-etcd-client, o: "system:masters"}
  - {name: flannel, use: flannel}
"""


def _install_as_told(lab: Lab, file: Path, host: Path) -> None:
    """Run the `install -D ...` lines a client file's header gives, from pki/, into a scratch host root."""
    for line in file.read_text().splitlines():
        if line.startswith("#   install -D "):
            *head, source, dest = line[len("#   "):].split()
            subprocess.run([*head, str(lab.out / "pki" / source), f"{host}{dest}"], check=True)


def test_consumers_use_their_certificates(tmp_path: Path) -> None:
    """flannel's certificate does what flanneld does through its generated file; kube-apiserver's reads and
    writes through its flags; both installed exactly as their files' headers say."""
    with converged_lab(tmp_path / "lab", UPSTREAM, "3.5.1", "cc", extra=CONSUMERS) as lab:
        admin = _creds(lab, "admin", "ca.crt")
        config = '{"Network":"10.2.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan"}}'
        assert _etcdctl(lab, admin, "put", FLANNEL_KEY, config).returncode == 0
        host = tmp_path / "host"
        etcdctl = str(lab.root("etcd01") / "usr/local/bin/etcdctl")

        flannel_file = lab.out / "clients" / "flannel.flanneld.env"
        _install_as_told(lab, flannel_file, host)
        assert (host / "etc/etcd-client/flannel/flannel.key").stat().st_mode & 0o777 == 0o600
        env = systemd_env(flannel_file)
        prefix = env["FLANNELD_ETCD_PREFIX"]
        base = [etcdctl, f"--endpoints={env['FLANNELD_ETCD_ENDPOINTS']}",
                f"--cacert={host}{env['FLANNELD_ETCD_CAFILE']}", f"--cert={host}{env['FLANNELD_ETCD_CERTFILE']}",
                f"--key={host}{env['FLANNELD_ETCD_KEYFILE']}"]

        def flannel(*args: str) -> str:
            done = subprocess.run(lab.net.command(lab.net.hub, [*base, *args]), capture_output=True, text=True,
                                  env=ETCDCTL_ENV, timeout=30, check=False)
            assert done.returncode == 0, (args, done.stderr)
            return done.stdout

        assert flannel("get", "--print-value-only", f"{prefix}/config").strip() == config
        lease = flannel("lease", "grant", "60").split()[1]
        subnet = f"{prefix}/subnets/10.2.7.0-24"
        flannel("put", "--lease", lease, subnet, '{"PublicIP":"10.234.0.9","BackendType":"vxlan"}')
        flannel("lease", "keep-alive", "--once", lease)
        assert subnet in flannel("get", "--prefix", "--keys-only", f"{prefix}/subnets/").split()

        args_file = lab.out / "clients" / "kube-apiserver.kube-apiserver.args"
        _install_as_told(lab, args_file, host)
        flags = dict(line.split("=", 1) for line in args_file.read_text().splitlines() if line.startswith("--"))
        apiserver = [etcdctl, f"--endpoints={flags['--etcd-servers']}", f"--cacert={host}{flags['--etcd-cafile']}",
                     f"--cert={host}{flags['--etcd-certfile']}", f"--key={host}{flags['--etcd-keyfile']}"]
        for args in (["put", "/registry/namespaces/default", "x"], ["get", "/registry/namespaces/default"]):
            done = subprocess.run(lab.net.command(lab.net.hub, [*apiserver, *args]), capture_output=True, text=True,
                                  env=ETCDCTL_ENV, timeout=30, check=False)
            assert done.returncode == 0, done.stderr
