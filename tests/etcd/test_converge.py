"""The generated install script converges a node to its seed, with real etcd processes in network namespaces.

Each member has a scratch root: the files cloud-init's write_files would write are
put there from the real user-data, then the real script runs inside the member's
namespace, downloads the tarball from a web server in the hub (url mode), installs
etcd and its files, and starts or restarts etcd through tests/helpers/systemctl_shim.py
(PID 1 here is not systemd). The same seed twice restarts nothing; a changed
options.env restarts once; a renewed leaf alone restarts nothing, and etcd serves
the new certificate on both ports.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from generator import _cli
from tests.helpers.converge import BASE, DEBIAN_34, NEEDS, UPSTREAM, Lab, _serve, converged_lab, killer, point_at
from tests.helpers.etcd_checks import assert_all_healthy
from tests.helpers.specs import ROOT

pytestmark = NEEDS


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
        # One `systemctl enable` for every unit (each call reloads systemd: seconds on a small machine).
        enables = [c for c in lab.calls(name) if c.startswith("enable ")]
        assert len(enables) == 1 and enables[0].startswith("enable etcd.service etcd-seed-boot.service"), enables


def test_same_seed_twice_changes_nothing(lab: Lab) -> None:
    """Running the script again with the same seed installs nothing and restarts nothing."""
    before = _installed(lab.root("etcd03"))
    calls, pid = lab.calls("etcd03"), lab.pid("etcd03")
    line = lab.converge("etcd03")
    assert line == "etcd-seed: applied etcd 3.5.1: nothing changed; etcd left running"
    assert _installed(lab.root("etcd03")) == before
    assert lab.pid("etcd03") == pid
    new_calls = lab.calls("etcd03")[len(calls):]
    # etcd03 has no flannel unit: no start of any kind, and no enable or reload of systemd's units.
    assert [c for c in new_calls if not c.startswith("is-")] == [], new_calls


def test_a_unit_disabled_by_hand_is_enabled_again(lab: Lab) -> None:
    """The seed's units are all enabled after a run, one found disabled included, with one enable."""
    assert lab.systemctl("etcd02", "disable", "etcd.service").returncode == 0
    calls = lab.calls("etcd02")
    assert lab.converge("etcd02") == "etcd-seed: applied etcd 3.5.1: nothing changed; etcd left running"
    new_calls = lab.calls("etcd02")[len(calls):]
    changes = [c for c in new_calls if c.startswith(("enable", "daemon-reload"))]
    assert len(changes) == 2 and changes[0].startswith("enable etcd.service ") and changes[1] == "daemon-reload", \
        new_calls
    assert lab.systemctl("etcd02", "is-enabled", "etcd.service").stdout.strip() == "enabled"


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
    assert line.endswith("; etcd left running: it reads its certificate and CRL again on the next handshake")
    assert "options.env" not in line and "ca.crt" not in line
    assert lab.pid("etcd02") == pid
    started = [c for c in lab.calls("etcd02")[len(calls):] if c.startswith(("start", "restart"))]
    assert started == ["start etcd-seed-report.service"], started  # no etcd restart, no flannel here
    assert lab.served_serial(f"{BASE}.2", 2379, "admin") == new
    assert lab.served_serial(f"{BASE}.2", 2380, "etcd01") == new
    assert_all_healthy(lab.etcdctl, 3)


def test_ssl_module_agrees_on_the_ca(lab: Lab) -> None:
    """The CA the nodes trust is the one pki/ca.crt holds (guards the serial checks above)."""
    context = ssl.create_default_context(cafile=str(lab.out / "pki/ca.crt"))
    assert context.cert_store_stats()["x509_ca"] == 1
    assert (lab.root("etcd02") / "etc/ssl/etcd/ca.crt").read_bytes() == (lab.out / "pki/ca.crt").read_bytes()


def _readme_block(heading: str) -> str:
    """The first sh block of the operations guide's section under `heading`."""
    text = (ROOT / "docs" / "operations.md").read_text().split(heading, 1)[1]
    return text.split("```sh\n", 1)[1].split("```", 1)[0]


def _run_as_written(lab: Lab, block: str) -> subprocess.CompletedProcess[str]:
    """A block's lines run by sh as an operator would type them, from the hub with etcdctl on PATH. Only the
    example's addresses and output path are swapped for the lab's; `python -m generator` lines are left out."""
    lines = [line for line in block.splitlines() if line.strip() and not line.startswith(("#", "python -m"))]
    script = "\n".join(lines).replace("output/demo", str(lab.out)).replace("192.168.0.", f"{BASE}.")
    env = {"PATH": f"{lab.root('etcd01') / 'usr/local/bin'}:/usr/bin:/bin", "HOME": str(lab.work)}
    return subprocess.run(lab.net.command(lab.net.hub, ["sh", "-ec", script]), cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def test_readme_day2_commands_run_as_written(lab: Lab) -> None:
    """The operations guide's day-2 routine (find the leader, then check the rolled member) runs against real etcd as
    written:
    etcdctl 3.5 refuses a flag that shadows a variable etcdctl.env sets."""
    done = _run_as_written(lab, _readme_block("## Day 2"))
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


def _raise_heartbeat(lab: Lab) -> str:
    """Build the lab's spec with a heartbeat 10 ms longer (a setting etcd reads only at start); returns it."""
    spec = lab.spec.read_text()
    old = re.search(r"heartbeat_interval: (\d+)", spec)
    assert old is not None
    new = str(int(old.group(1)) + 10)
    lab.spec.write_text(spec.replace(old.group(0), f"heartbeat_interval: {new}"))
    lab.build()
    return new


def test_a_restart_owed_by_a_killed_run_is_made_by_the_next(lab: Lab) -> None:
    """A run killed after it put a new options.env in place and before it restarted etcd: the next run finds every
    file as the seed has it, and restarts etcd all the same. Before, it said "etcd left running", etcd kept the old
    heartbeat, and the node recorded the new seed as applied (status: in step)."""
    new = _raise_heartbeat(lab)
    lab.stage("etcd02")
    tools = lab.work / "kill-on-enable"
    tools.mkdir()
    # Killed (SIGKILL, as a power cut) at its check of the units: after every file, before the restart.
    (tools / "systemctl").write_text(
        '#!/bin/sh\nif [ "$1" = is-enabled ]; then\n'
        '  pkill -KILL -f "$ETCD_SEED_ROOT/usr/local/sbin/etcd-seed-install"; exit 137\nfi\n'
        f'exec {lab.shim_dir}/systemctl "$@"\n')
    (tools / "systemctl").chmod(0o755)
    root, pid = lab.root("etcd02"), lab.pid("etcd02")
    applied = (root / "var/lib/etcd-seed/applied").read_text()
    killed = lab.install("etcd02", None, path=str(tools))
    assert killed.returncode != 0 and "etcd-seed: applied" not in killed.stderr, killed.stderr
    assert f"ETCD_HEARTBEAT_INTERVAL={new}" in (root / "etc/etcd/options.env").read_text()
    assert lab.pid("etcd02") == pid and (root / "var/lib/etcd-seed/applied").read_text() == applied
    assert lab.converge("etcd02") == "etcd-seed: applied etcd 3.5.1: nothing changed; restarted etcd"
    assert lab.pid("etcd02") != pid
    assert f"ETCD_HEARTBEAT_INTERVAL={new}".encode() in Path(f"/proc/{lab.pid('etcd02')}/environ").read_bytes()
    assert not (root / "var/lib/etcd-seed/restart-pending").exists()
    assert (root / "var/lib/etcd-seed/applied").read_text() != applied
    lab.wait_healthy()
    for name in ("etcd01", "etcd03"):  # the lab stays one cluster on one seed
        lab.stage(name)
        assert lab.converge(name).endswith("; restarted etcd")
        lab.wait_healthy()


def test_a_restart_owed_while_etcd_is_still_starting_is_made(lab: Lab) -> None:
    """A new heartbeat (read only at start) while systemd says etcd is activating, as when a member waits for its
    peers: the step must restart etcd. A start merges into the start under way, whose process read the old
    options.env, and the node then recorded the new seed as applied (status: in step)."""
    new = _raise_heartbeat(lab)
    tools = lab.work / "activating"
    tools.mkdir(exist_ok=True)
    (tools / "systemctl").write_text(
        '#!/bin/sh\ncase "$1 $*" in "is-active "*etcd.service) echo activating; exit 3;; esac\n'
        f'exec {lab.shim_dir}/systemctl "$@"\n')
    (tools / "systemctl").chmod(0o755)
    for name in ("etcd02", "etcd01", "etcd03"):  # the lab stays one cluster on one seed
        lab.stage(name)
        pid = lab.pid(name)
        done = lab.install(name, None, path=str(tools))
        assert done.returncode == 0, done.stderr
        assert done.stderr.splitlines()[-1].endswith("; started etcd"), done.stderr
        assert lab.pid(name) != pid, f"{name}: etcd kept the process that read the old options.env"
        assert f"ETCD_HEARTBEAT_INTERVAL={new}".encode() in Path(f"/proc/{lab.pid(name)}/environ").read_bytes()
        lab.wait_healthy()


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
