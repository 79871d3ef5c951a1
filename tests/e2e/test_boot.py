"""Proof by boot: real Debian 12 VMs start from the generated seeds and form a TLS etcd cluster by themselves.

Run with `make e2e` (root, qemu, mmdebstrap). Everything runs inside network
namespaces this test creates; VMs and namespaces are removed on exit.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from generator import _cli
from generator.decisions import decide
from generator.iso import read_iso
from generator.loader import load_spec
from generator.node import options as etcd_options
from generator.render import FLANNEL_KEY, flannel_json
from tests.helpers.etcd_checks import (
    assert_all_healthy,
    assert_members_are_the_spec,
    assert_refused,
    wallet,
)
from tests.helpers.vm import (
    APPLIED,
    BOOT_TIMEOUT_S,
    BUNDLE,
    FROM_BUNDLE,
    INSTALLED,
    INSTALLED_MTIMES,
    MOMENTS,
    NEEDS,
    NODES,
    VM,
    Lab,
    assert_node_state,
    bad_bundle_vm,
    boot_step_line,
    booted_lab,
    bundle_version,
    cluster_version,
    etcd_starts_this_boot,
    power_cut_during_reseed,
    reseed_reboot,
    served_serial,
    spec_text,
    wait_for,
)

pytestmark = NEEDS
# Three consumers, each with its own etcd role; the rolling pass revokes `reader`.
CLIENTS = ("clients:\n  - {name: flannel, use: flannel}\n"
           "  - {name: kube-apiserver, use: kube-apiserver, cn: kube-apiserver-etcd-client, o: 'system:masters'}\n"
           "  - {name: reader, access: [{key: probe}]}\n")
# Where each node loses power in its first boot: 5 s after its install step reported, as a rack does in an
# outage (etcd01, whose next boot the profile below reads), during its tarball copy, and at a random moment of
# the install step that follows.
FIRST_BOOT_CUTS = ("applied", "copy", "install")
# Where each node of the rolling pass loses power in its re-seed boot, in the order rolled (the leader last).
RESEED_CUTS = ("copy", "final", "init")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """Three Debian 12 nodes on the starting release, booted from their seeds (virtio disks). Each loses power
    in its first boot (FIRST_BOOT_CUTS), and must come up healthy all the same."""
    assert BUNDLE.exists() and FROM_BUNDLE.exists(), "make e2e builds vendor/ first"
    with booted_lab(tmp_path_factory.mktemp("e2e"), FROM_BUNDLE, cuts=FIRST_BOOT_CUTS,
                    clients=CLIENTS) as booted:
        yield booted


def test_every_member_healthy_over_mutual_tls(lab: Lab) -> None:
    """etcdctl with the generated admin certificate finds every member healthy."""
    assert_all_healthy(lab.etcdctl, NODES)


def test_status_of_the_booted_cluster_is_healthy_and_in_step(lab: Lab) -> None:
    """`etcd-seed status` from the operator's side: every row in step with the build, exit 0, once each node's
    etcd-seed-report.service has put the seed it runs into etcd (it runs after etcd, at boot; the lab waits)."""
    code, report, text = lab.status()
    assert code == 0, text
    assert [(r["node"], r["seed"], r["state"]) for r in report["rows"]] == \
        [(n.name, "current", "in step") for n in lab.spec.nodes]
    assert report["next"] == "nothing to roll" and report["problems"] == []
    assert [(r["node"], r["version"], r["client_cert"], r["peer_cert"]) for r in report["rows"]] == \
        [(n.name, lab.spec.etcd.version, "current", "current") for n in lab.spec.nodes]
    assert sum(r["leader"] for r in report["rows"]) == 1


def test_member_list_is_the_spec(lab: Lab) -> None:
    """member list shows exactly the spec's nodes and peer URLs."""
    assert_members_are_the_spec(lab.etcdctl, lab.spec)


def test_client_without_certificate_is_refused(lab: Lab) -> None:
    assert_refused(lab.etcdctl, "e2e-no-cert")


def test_client_from_another_ca_is_refused(lab: Lab) -> None:
    other = lab.work / "other"
    other.mkdir()
    shutil.copy(lab.work / "cluster.yaml", other / "cluster.yaml")
    assert _cli.main(["build", "--spec", str(other / "cluster.yaml"), "--out", str(other / "out")]) == 0
    assert_refused(lab.etcdctl, "e2e-foreign-ca", foreign_pki=other / "out" / "e2e" / "pki")


def test_flannel_config_is_the_spec(lab: Lab) -> None:
    """The first node wrote flannel's network config through the v3 API, as the spec says."""
    want = flannel_json(lab.spec)
    wait_for("the flannel config", lambda: lab.etcdctl("get", "--print-value-only", FLANNEL_KEY)
             .stdout.strip() == want, 120, lab.vms)


@pytest.mark.parametrize("index", range(NODES))
def test_node_state_over_ssh(lab: Lab, index: int) -> None:
    """On each node: cloud-init done without errors, key and data dir owned right, hostname, default route,
    no plaintext listener, and etcd's environment exactly the build's settings."""
    assert_node_state(lab, index)


# Where a boot spends its time, read on the node: systemd's and cloud-init's own accounts. Printed for
# docs/testing.md's boot-time summary; the assertions only check that each account covers etcd's start.
PROFILE = {
    "systemd": "systemd-analyze time",
    "critical chain": "systemd-analyze critical-chain etcd.service --no-pager",
    "units": "systemd-analyze blame --no-pager | head -12",
    "cloud-init": "sudo cloud-init analyze blame | head -40",
    "install step": "sudo journalctl -b -o short-monotonic -u etcd-seed-boot -u etcd-seed-clock -u etcd --no-pager"
                    " | grep -E 'Start|Finished|etcd-seed:|ready to serve' | head -20",
}


def _assert_step_reloaded_nothing(lab: Lab, vm: VM) -> None:
    """This boot's boot step found its seed applied, and made systemd reload nothing (each reload took 10-15 s
    on these guests)."""
    journal = lab.ssh(vm.ip, "sudo journalctl -b -o cat --no-pager | grep -E "
                             "'^Reloading|Converge etcd0|etcd-seed: applied'").stdout.splitlines()
    start = next(i for i, line in enumerate(journal) if line.startswith("Starting etcd-seed-boot"))
    end = next(i for i, line in enumerate(journal) if line.startswith("Finished etcd-seed-boot"))
    step = journal[start:end + 1]
    assert any("nothing changed; etcd starts next" in line for line in step), journal
    assert not [line for line in step if line.startswith("Reloading")], (vm.name, step)


def test_where_a_boot_spends_its_time(lab: Lab) -> None:
    """etcd01's boot after its power cut (same seed, cloud-init done): systemd's and cloud-init's timings, and a
    boot step that changed nothing and reloaded nothing (the fault test checks the same of a later boot)."""
    assert FIRST_BOOT_CUTS[0] == "applied"
    vm = lab.vms[0]
    for what, command in PROFILE.items():
        done = lab.ssh(vm.ip, command)
        print(f"boot profile: {vm.name}: {what} (exit {done.returncode}):\n{done.stdout.rstrip()}")
        if what == "critical chain":
            assert "etcd.service" in done.stdout, done.stdout + done.stderr
        if what == "cloud-init":
            assert "Boot Record" in done.stdout, done.stdout + done.stderr
    _assert_step_reloaded_nothing(lab, vm)


def test_fault_rejoin_and_bad_bundle(lab: Lab) -> None:
    """One member killed: writes still commit; rebooted with its seed, it rejoins with its data and
    cloud-init does not run again. Meanwhile a seed with a corrupt tarball boots without installing etcd."""
    survivors, victim = lab.vms[:2], lab.vms[2]
    assert lab.etcdctl("put", "e2e-before", "1").returncode == 0
    mtimes_before = lab.ssh(victim.ip, INSTALLED_MTIMES).stdout.splitlines()
    assert len(mtimes_before) == len(INSTALLED)
    version = lab.spec.etcd.version
    count = f"sudo grep -ac 'etcd-seed: applied etcd {version}:' /var/log/cloud-init-output.log"
    installs_before = lab.ssh(victim.ip, count).stdout.strip()
    ids_before = json.loads(lab.etcdctl("member", "list", "-w", "json").stdout)["members"]
    victim.kill()
    killed = time.monotonic()
    # The victim may have been the leader: the survivors first elect a new one.
    committed = wait_for("a write through the two survivors", lambda: lab.etcdctl(
        "put", "e2e-during", "2", endpoints=[v.ip for v in survivors]).returncode == 0, 90, survivors)
    print(f"bench: kill to first committed write on the survivors: {committed - killed:.0f} s")
    code, down, text = lab.status()
    assert code == 1, text
    assert f"problem: {victim.name}: does not answer on {victim.ip}:2379 (" in text
    assert down["next"] == f"wait: {victim.name} does not answer; roll nothing else until it is back"
    assert [r["reachable"] for r in down["rows"]] == [True, True, False]

    bad = bad_bundle_vm(lab)
    victim.start(lab.net, lab.image, lab.accel)
    bad.start(lab.net, lab.image, lab.accel)
    back = wait_for(f"{victim.name} to rejoin", lambda: lab.etcdctl(
        "endpoint", "health", endpoints=[victim.ip]).returncode == 0, BOOT_TIMEOUT_S, [victim, bad])
    print(f"bench: {victim.name} reboot to healthy member: {back - victim.powered_on:.0f} s")
    local = lab.etcdctl("get", "--consistency=s", "--print-value-only", "e2e-during", endpoints=[victim.ip])
    assert local.stdout.strip() == "2", local.stderr
    assert lab.etcdctl("get", "--print-value-only", "e2e-before").stdout.strip() == "1"
    ids_after = json.loads(lab.etcdctl("member", "list", "-w", "json").stdout)["members"]
    assert sorted(m["ID"] for m in ids_after) == sorted(m["ID"] for m in ids_before)
    installs = lab.ssh(victim.ip, f"{count}; cat /var/lib/cloud/data/instance-id; {INSTALLED_MTIMES}")
    meta = yaml.safe_load(read_iso(victim.seed.read_bytes())["meta-data"])
    assert installs.stdout.splitlines()[0] == installs_before, "cloud-init ran the install again on reboot"
    # The boot step ran before etcd, found the same seed applied, and changed nothing.
    assert boot_step_line(lab, victim) == f"etcd-seed: applied etcd {version}: nothing changed; etcd starts next"
    _assert_step_reloaded_nothing(lab, victim)
    assert meta["instance-id"] == installs.stdout.splitlines()[1]
    assert installs.stdout.splitlines()[2:] == mtimes_before, "a reboot with the same seed touched installed files"

    wait_for("the bad-bundle node's cloud-init to finish", bad.poll_finished, BOOT_TIMEOUT_S, [bad])
    report = lab.ssh(bad.ip, "cloud-init status; test -e /usr/local/bin/etcd && echo INSTALLED; "
                             "systemctl is-active etcd; sudo grep -a 'etcd-seed: ERROR' /var/log/cloud-init-output.log",
                     known_hosts=lab.work / "bad" / "out" / "e2e" / "known_hosts")
    assert "status: error" in report.stdout, report.stdout + report.stderr
    assert "INSTALLED" not in report.stdout
    assert "\nactive\n" not in f"\n{report.stdout}"
    assert re.search(rf"etcd-seed: ERROR: {re.escape(lab.spec.etcd.tarball_name)} has sha256 [0-9a-f]{{64}}, "
                     r"expected [0-9a-f]{64}; nothing installed or changed", report.stdout), report.stdout
    bad.kill()


def _wallet(lab: Lab, name: str) -> Path:
    return wallet(lab.pki, name, lab.work / f"wallet-{name}")


def _answer(lab: Lab, who: str, *args: str, ip: str | None = None) -> str:
    """allowed, denied (etcd answered permission denied) or refused (the member refused the certificate)."""
    done = lab.etcdctl(*args, endpoints=[ip] if ip else None, cert_dir=_wallet(lab, who))
    return "allowed" if done.returncode == 0 else "denied" if "permission denied" in done.stderr else "refused"


# What each consumer's role allows and refuses, with auth on (kube-apiserver's compaction key, flannel's config).
CONFINED = [
    ("flannel", ("get", "/coreos.com/network/config"), "allowed"),
    ("flannel", ("put", "/coreos.com/network/subnets/10.2.9.0-24", "lease"), "allowed"),
    ("flannel", ("get", "/registry/", "--prefix"), "denied"),
    ("flannel", ("put", "/registry/x", "evil"), "denied"),
    ("kube-apiserver", ("put", "/registry/pods/a", "pod"), "allowed"),
    ("kube-apiserver", ("put", "compact_rev_key", "1"), "allowed"),
    ("kube-apiserver", ("get", "/coreos.com/network/config"), "denied"),
    ("kube-apiserver", ("member", "list", "-w", "json"), "allowed"),
    ("reader", ("get", "probe"), "allowed"),
    ("reader", ("put", "probe", "evil"), "denied"),
    ("reader", ("get", "/registry/", "--prefix"), "denied"),
]


def test_auth_confines_each_consumer_to_its_keys(lab: Lab) -> None:
    """The first node turned etcd's auth on by itself; each consumer's certificate reaches only its own keys."""
    first = lab.vms[0]
    wait_for("etcd01's auth step", lambda: "etcd-seed: auth: on;" in lab.ssh(
        first.ip, "sudo journalctl -u etcd-seed-auth --no-pager -o cat").stdout, 120, lab.vms)
    rows = [(who, " ".join(args), _answer(lab, who, *args), want) for who, args, want in CONFINED]
    print("\ne2e: consumers with auth on:\n" + "\n".join(f"  {who:15} {op:50} {got}" for who, op, got, _ in rows))
    assert [got for *_, got, _ in rows] == [want for *_, want in rows]


def test_rolling_upgrade_renew_and_setting(lab: Lab) -> None:
    """One rolling pass: 3.4.23 -> the example's 3.5.16, every leaf renewed, a new heartbeat and the consumer
    `reader` revoked, one node at a time by re-seeding and rebooting, while a writer keeps writing. Every
    acknowledged write survives; afterwards every member refuses `reader` and still serves `flannel`."""
    target = bundle_version(BUNDLE)
    before = lab.spec.etcd.version
    spec_file = lab.work / "cluster.yaml"
    public_key = (lab.work / "id_ed25519.pub").read_text().strip()
    nodes = [(n.name, str(n.ip), n.mac) for n in lab.spec.nodes]
    assert _answer(lab, "reader", "get", "probe") == "allowed"
    revoked = CLIENTS.replace("{name: reader, ", "{name: reader, revoked: true, ")
    spec_file.write_text(spec_text(public_key, nodes, BUNDLE, clients=revoked).replace("heartbeat_interval: 250",
                                                                                       "heartbeat_interval: 300"))
    out, err = io.StringIO(), io.StringIO()
    code = _cli.main(["build", "--spec", str(spec_file), "--out", str(lab.work / "out"), "--renew"], out, err)
    assert code == 0, err.getvalue()
    assert f"upgrade: etcd {before} -> {target} (one minor step)" in out.getvalue()
    assert "reader: its certificate (serial " in out.getvalue() and "(revoked in the spec)" in out.getvalue()
    lab.spec, _ = load_spec(spec_file.read_text(), base_dir=lab.work)

    writer = lab.writer()
    writer.start()
    rolled: list[str] = []
    cut: dict[str, str] = {}  # each node's moment of its re-seed boot's power cut (RESEED_CUTS)
    try:
        for position in range(NODES):
            # The operator's routine: `status` names the node to roll, followers first and the leader last.
            code, report, text = lab.status()
            assert code == 1 and [r["node"] for r in report["rows"] if r["in_step"]] == sorted(rolled), text
            name = report["next"].split()[0]
            leader = next(r["node"] for r in report["rows"] if r["leader"])
            assert report["next"] == (f"{name} (the leader, last)" if name == leader else f"{name} (a follower)")
            assert name not in rolled and (name != leader or len(rolled) == NODES - 1), text
            vm = next(v for v in lab.vms if v.name == name)
            # What the operations guide tells the operator to wait for, and nothing more: that member healthy.
            def healthy(vm: VM = vm) -> bool:
                return lab.etcdctl("endpoint", "health", endpoints=[vm.ip]).returncode == 0
            # Each node first loses power in its re-seed boot, at its own moment, then boots again.
            cut[vm.name] = RESEED_CUTS[position]
            console = power_cut_during_reseed(lab, vm, MOMENTS[RESEED_CUTS[position]])
            took = reseed_reboot(lab, vm, "healthy", healthy, powered_on=False)
            # Healthy means running the new seed: the boot step put it in place before etcd started.
            assert cluster_version(lab, vm.ip).get("etcdserver") == target, cluster_version(lab, vm.ip)
            line = boot_step_line(lab, vm)
            assert line.endswith("; etcd starts next"), line
            if APPLIED in console:  # the cut boot's step had put the new seed in place
                assert "nothing changed" in line, line
            elif "etcd-seed: copying " not in console:  # it had not begun
                assert f"etcd {before} -> {target}" in line, line
            print(f"bench: {vm.name} re-seed reboot to healthy member on {target}: {took:.0f} s")
            rolled.append(name)
            # status says in step once the node's report has put its new seed into etcd.
            healthy_at = time.monotonic()
            reported = wait_for(f"{name} in step in status", lambda name=name: any(
                r["node"] == name and r["in_step"] for r in lab.status()[1]["rows"]), 180, lab.vms, step=5)
            print(f"bench: {vm.name} healthy to in step in status: {reported - healthy_at:.0f} s")
    finally:
        writer.finish(f"rolling pass over {len(lab.vms)} nodes")
    code, report, text = lab.status()
    assert code == 0 and report["next"] == "nothing to roll", text
    for vm in lab.vms:
        assert _answer(lab, "reader", "get", "probe", ip=vm.ip) == "refused", f"{vm.name} still serves reader"
        assert _answer(lab, "flannel", "get", "/coreos.com/network/config", ip=vm.ip) == "allowed", vm.name
        journal = lab.ssh(vm.ip, "sudo journalctl -b -u etcd --no-pager -o cat | grep -c revoked || true").stdout
        assert int(journal.strip() or 0) > 0, f"{vm.name}: etcd logged no revoked certificate"
    print("e2e: the revoked reader is refused by every member; flannel is served")

    wait_for("the cluster version to reach 3.5", lambda: cluster_version(lab, lab.vms[0].ip).get(
        "etcdcluster", "").startswith(target.rsplit(".", 1)[0]), 120, lab.vms)
    status = json.loads(lab.etcdctl("endpoint", "status", "-w", "json").stdout)
    assert sorted(s["Status"]["version"] for s in status) == [target] * NODES
    assert_all_healthy(lab.etcdctl, NODES)
    writer.assert_all_readable(set(lab.etcdctl("get", "roll/", "--prefix", "--keys-only").stdout.split()))
    wait_for("cloud-init to finish everywhere", lambda: all(v.poll_finished() for v in lab.vms), BOOT_TIMEOUT_S,
             lab.vms)
    for vm, node in zip(lab.vms, lab.spec.nodes, strict=True):
        issued = x509.load_pem_x509_certificates((lab.pki / f"{node.name}.crt").read_bytes())[0].serial_number
        peer = next(n.name for n in lab.spec.nodes if n.name != node.name)
        assert served_serial(lab, vm.ip, 2379, "admin") == issued
        assert served_serial(lab, vm.ip, 2380, peer) == issued
        environ = lab.ssh(vm.ip, "sudo cat /proc/$(pidof etcd)/environ | tr '\\0' '\\n' | grep '^ETCD_'")
        expected = etcd_options(lab.spec, decide(lab.spec), node)
        assert dict(line.split("=", 1) for line in environ.stdout.splitlines()) == expected
        # runcmd, later in the same boot, found the seed in place: etcd was started once in this boot, not again.
        # -a: a power cut leaves zeros where cloud-init's unflushed log lines were, and grep calls the file binary.
        runcmd = lab.ssh(vm.ip, f"sudo grep -a 'etcd-seed: applied etcd {target}:' /var/log/cloud-init-output.log")
        if runcmd.stdout.strip():
            assert runcmd.stdout.strip().splitlines()[-1].endswith("nothing changed; etcd left running"), runcmd.stdout
        else:
            # cloud-init writes a module's semaphore before it runs the module: a cut in the final stage that lands
            # after scripts-user's leaves runcmd done for this seed, which the boot step had put in place before etcd
            # started in the cut boot (its line above). Seen once, the cut 2 s after the stage's first line.
            assert cut[vm.name] == "final", (vm.name, cut[vm.name])
            done = lab.ssh(vm.ip, "sudo test -e /var/lib/cloud/instance/sem/config_scripts_user && echo marked")
            assert done.stdout.strip() == "marked", (vm.name, done.stdout, done.stderr)
        assert etcd_starts_this_boot(lab, vm) == 1
        # cloud-init itself says done: a cut in its final stage left runcmd's script empty, which it would run
        # (Exec format error) and report as an error on every later boot.
        state = lab.ssh(vm.ip, "cloud-init status; cat /run/cloud-init/result.json")
        assert "status: done" in state.stdout, (vm.name, state.stdout)
        assert json.loads(state.stdout.split("\n", 1)[1])["v1"]["errors"] == [], (vm.name, state.stdout)

    # The same seed again changes nothing: no file is rewritten and etcd keeps running.
    vm = lab.vms[0]
    probe = f"systemctl show -p ExecMainStartTimestamp etcd; {INSTALLED_MTIMES}"
    first = lab.ssh(vm.ip, probe).stdout
    again = lab.ssh(vm.ip, "sudo /usr/local/sbin/etcd-seed-install 2>&1")
    assert again.stdout.strip() == f"etcd-seed: applied etcd {target}: nothing changed; etcd left running", again
    assert lab.ssh(vm.ip, probe).stdout == first
