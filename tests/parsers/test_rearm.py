"""The seed's bootcmd, run by Debian's real cloud-init bootcmd module, over semaphores made by cloud-init's own
FileSemaphores: until the node has applied this seed, each boot runs the seed's modules again; once it has, only a
runcmd script that a power cut left empty or missing is written and run again. Paths move under a scratch root
(ETCD_SEED_ROOT, which the script honours as the install step does); the cloud object is a stand-in because
bootcmd asks it for the instance-id alone, and a real one needs a datasource."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.helpers.cli import build
from tests.helpers.parsers import SYSTEM_PYTHON, cloud_init_available
from tests.helpers.specs import spec_yaml

pytestmark = pytest.mark.skipif(cloud_init_available() is not None, reason=str(cloud_init_available()))

# The module names as cloud.cfg lists them; cloud-init's semaphore for each is config_<name with _>.
SEEDED = ("write-files", "users-groups", "ssh", "runcmd", "scripts-user")

RUN = """
import inspect, json, logging, os, sys
from cloudinit import helpers, settings
from cloudinit.config import cc_bootcmd
given = json.load(sys.stdin)
sems = helpers.FileSemaphores(given["sem"])
for name in given["ran"]:
    with sems.lock("config-" + name, settings.PER_INSTANCE):
        pass
class Cloud:  # bootcmd asks the cloud for the instance-id only
    def get_instance_id(self):
        return given["iid"]
args = ["bootcmd", {"bootcmd": given["bootcmd"]}, Cloud()]
if "log" in inspect.signature(cc_bootcmd.handle).parameters:  # cloud-init before 24.1
    args.append(logging.getLogger())
cc_bootcmd.handle(*args, [])
print(json.dumps([n for n in given["ran"] if sems.has_run("config-" + n, settings.PER_INSTANCE)]))
"""


@pytest.fixture(scope="module")
def bootcmd(tmp_path_factory: pytest.TempPathFactory, fake_bundle_bytes: bytes) -> tuple[list[str], str]:
    work = tmp_path_factory.mktemp("rearm")
    (work / "etcd.tar.gz").write_bytes(fake_bundle_bytes)
    (work / "cluster.yaml").write_text(spec_yaml())
    assert build(work)[0] == 0
    node = work / "out" / "demo" / "etcd02"
    iid = yaml.safe_load((node / "meta-data").read_text())["instance-id"]
    return yaml.safe_load((node / "user-data").read_text())["bootcmd"], iid


def _boot(root: Path, bootcmd: list[str], iid: str, ran: tuple[str, ...], applied: str | None = None,
          runcmd: bytes | None = None, on_disk: str | None = None, path: str = "") -> tuple[list[str], str]:
    """One boot's bootcmd over the semaphores of modules that an earlier boot marked as run; returns those still
    marked, and what it said. on_disk: the seed whose install step write_files last put in place (default: the
    applied one)."""
    cloud = root / "var/lib/cloud/instances" / iid
    if applied is not None:
        (root / "var/lib/etcd-seed").mkdir(parents=True, exist_ok=True)
        (root / "var/lib/etcd-seed/applied").write_text(applied + "\n")
        (root / "usr/local/sbin").mkdir(parents=True, exist_ok=True)
        (root / "usr/local/sbin/etcd-seed-install").write_text(
            f"#!/bin/sh\nset -eu\nwant=abc\nseed={on_disk or applied}\nversion=3.5.16\n")
    if runcmd is not None:
        (cloud / "scripts").mkdir(parents=True, exist_ok=True)
        (cloud / "scripts/runcmd").write_bytes(runcmd)
    given = {"sem": str(cloud / "sem"), "ran": list(ran), "iid": iid, "bootcmd": bootcmd}
    done = subprocess.run([SYSTEM_PYTHON, "-c", RUN], input=json.dumps(given), capture_output=True, text=True,
                          check=False,
                          env={"PATH": f"{path}/usr/sbin:/usr/bin:/sbin:/bin", "ETCD_SEED_ROOT": str(root)})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout), done.stderr


def test_a_first_boot_cut_short_runs_the_seed_again(tmp_path: Path, bootcmd: tuple[list[str], str]) -> None:
    """A power cut after write_files and runcmd were marked as run, before the install step applied the seed: this
    boot runs them all again. On the old seed (no bootcmd) they stayed marked, and nothing installed the seed."""
    commands, iid = bootcmd
    left, said = _boot(tmp_path, commands, iid, ("seed_random", *SEEDED))
    assert left == []
    assert f"etcd-seed: seed {iid} is not applied yet: cloud-init writes its files and runs its install step " \
           "again" in said


def test_a_first_boot_says_nothing(tmp_path: Path, bootcmd: tuple[list[str], str]) -> None:
    """On a first boot only the modules before bootcmd have run: nothing to say."""
    commands, iid = bootcmd
    assert _boot(tmp_path, commands, iid, ("seed_random",)) == ([], "")


def test_a_node_still_on_its_last_seed_runs_the_new_one_again(tmp_path: Path, bootcmd: tuple[list[str], str]) -> None:
    """A re-seed whose boot was cut before the seed was applied: the record names the last seed."""
    commands, iid = bootcmd
    left, _ = _boot(tmp_path, commands, iid, SEEDED, applied="etcd02-0123456789abcdef")
    assert left == []


def test_a_seed_attached_again_after_a_later_one_failed_runs_again(tmp_path: Path,
                                                                    bootcmd: tuple[list[str], str]) -> None:
    """The node applied this seed, then a later seed's boot wrote that seed's files and failed; the operator attaches
    this one again. cloud-init keeps this instance's marks from its first boot: without running write_files again,
    every boot would run the later seed's install step."""
    commands, iid = bootcmd
    left, said = _boot(tmp_path, commands, iid, SEEDED, applied=iid, on_disk="etcd02-fedcba9876543210",
                       runcmd=b"#!/bin/sh\n")
    assert left == []
    assert f"etcd-seed: seed {iid} was applied, but another seed's install step is on disk: cloud-init writes its " \
           "files and runs its install step again" in said


def test_an_applied_seed_is_left_alone(tmp_path: Path, bootcmd: tuple[list[str], str]) -> None:
    commands, iid = bootcmd
    assert _boot(tmp_path, commands, iid, SEEDED, applied=iid, runcmd=b"#!/bin/sh\n/usr/local/sbin/x\n") == \
        (list(SEEDED), "")


@pytest.mark.parametrize("runcmd", [b"", None], ids=["empty", "missing"])
def test_a_runcmd_script_the_cut_lost_is_written_and_run_again(tmp_path: Path, bootcmd: tuple[list[str], str],
                                                               runcmd: bytes | None) -> None:
    """The seed applied by the boot step, then a cut in cloud-init's final stage: runcmd's script was never
    flushed. cloud-init would run the empty file (Exec format error) and report an error on every boot."""
    commands, iid = bootcmd
    if runcmd is None:
        (tmp_path / "var/lib/cloud/instances" / iid / "scripts").mkdir(parents=True)
    left, said = _boot(tmp_path, commands, iid, SEEDED, applied=iid, runcmd=runcmd)
    assert left == ["write-files", "users-groups", "ssh"]
    assert f"etcd-seed: runcmd's script of seed {iid} was lost in a power cut" in said


@pytest.mark.parametrize("iid", ["", "../../../x", ".", "etcd02-0123 x"])
def test_a_strange_instance_id_touches_nothing(tmp_path: Path, bootcmd: tuple[list[str], str], iid: str) -> None:
    """The instance-id comes from the attached seed's meta-data: one that is empty, could leave cloud-init's
    directory or is not a word removes nothing, wherever it points."""
    commands, _ = bootcmd
    assert _boot(tmp_path, commands, iid, SEEDED) == (list(SEEDED), "")


def _network(tmp_path: Path, iid: str, rendered: bytes) -> tuple[Path, Path, str]:
    """A node's rendered network config, cloud-init's record of the instance-id, and a systemctl stand-in that logs
    its calls (PID 1 here is not systemd, and the test must not reboot anything)."""
    net = tmp_path / "root/etc/netplan/50-cloud-init.yaml"
    net.parent.mkdir(parents=True)
    net.write_bytes(rendered)
    record = tmp_path / "root/var/lib/cloud/data/instance-id"
    record.parent.mkdir(parents=True)
    record.write_text(iid + "\n")
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "systemctl").write_text(f'#!/bin/sh\necho "$*" >> {tmp_path}/systemctl.log\n')
    (shim / "systemctl").chmod(0o755)
    return net, record, f"{shim}:"


def test_a_network_config_the_cut_left_empty_is_rendered_again_after_a_reboot(tmp_path: Path,
                                                                            bootcmd: tuple[list[str], str]) -> None:
    """A cut in a first boot's init stage kept cloud-init's rendered netplan file but not its content, and the
    instance-id record: cloud-init never rendered it again, and the node never had its address (seen on Debian 13).
    Until the seed is applied, the bootcmd removes both and reboots: the next boot is a new instance's."""
    commands, iid = bootcmd
    net, record, path = _network(tmp_path, iid, b"")
    left, said = _boot(tmp_path / "root", commands, iid, SEEDED, path=path)
    assert left == []
    assert "etcd-seed: /etc/netplan/50-cloud-init.yaml was left empty by a power cut: rebooting, so that cloud-init " \
           "renders it again" in said
    assert not net.exists() and not record.exists()
    assert (tmp_path / "systemctl.log").read_text() == "reboot\n"


@pytest.mark.parametrize("case", ["rendered", "applied"])
def test_a_network_config_is_left_alone_when_it_has_content_or_the_seed_is_applied(
        tmp_path: Path, bootcmd: tuple[list[str], str], case: str) -> None:
    commands, iid = bootcmd
    net, record, path = _network(tmp_path, iid, b"network: {version: 2}\n" if case == "rendered" else b"")
    _boot(tmp_path / "root", commands, iid, SEEDED, applied=iid if case == "applied" else None,
          runcmd=b"#!/bin/sh\n" if case == "applied" else None, path=path)
    assert net.exists() and record.exists()
    assert not (tmp_path / "systemctl.log").exists()
