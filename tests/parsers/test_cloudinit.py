"""Debian's real cloud-init accepts what the generator writes: the user-data schema and network-config."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from generator import external
from tests.helpers.cli import build
from tests.helpers.parsers import SYSTEM_PYTHON

CLOUD_INIT = shutil.which("cloud-init")
pytestmark = pytest.mark.skipif(CLOUD_INIT is None, reason="cloud-init is missing; make test installs it")


def schema(path: Path) -> subprocess.CompletedProcess[str]:
    assert CLOUD_INIT is not None
    return subprocess.run([CLOUD_INIT, "schema", "-c", str(path)], capture_output=True, text=True,
                          check=False)


@pytest.fixture
def root(workdir: Path) -> Path:
    assert build(workdir)[0] == 0
    return workdir / "out" / "demo"


@pytest.mark.parametrize("node", ["etcd01", "etcd02"])
def test_user_data_passes_cloud_init_schema(root: Path, node: str) -> None:
    """`cloud-init schema -c` calls the rendered user-data valid."""
    result = schema(root / node / "user-data")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Valid cloud-config" in result.stdout


def test_schema_check_catches_a_broken_user_data(root: Path, tmp_path: Path) -> None:
    """The same check fails on user-data with a wrong type, so passing it means something."""
    broken = tmp_path / "user-data"
    text = (root / "etcd01" / "user-data").read_text()
    broken.write_text(text.replace('permissions: "0600"', "permissions: [0600]"))
    result = schema(broken)
    assert result.returncode != 0 and "permissions" in result.stdout + result.stderr


def test_network_config_renders_to_the_static_address(root: Path, tmp_path: Path) -> None:
    """cloud-init turns network-config into an ifupdown stanza with the node's address and gateway."""
    assert CLOUD_INIT is not None
    out = tmp_path / "eni"
    result = subprocess.run(
        [CLOUD_INIT, "devel", "net-convert", "--network-data", str(root / "etcd02" / "network-config"),
         "--kind", "yaml", "--output-kind", "eni", "-D", "debian", "-d", str(out),
         "--mac", "ens3,52:54:00:00:00:02"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    eni = "\n".join(p.read_text() for p in out.rglob("*") if p.is_file())
    # The stanza's interface is the NIC with this MAC: either by its name, or renamed by a udev rule.
    iface = re.search(r"^iface (\S+) inet static$", eni, re.MULTILINE)
    assert iface is not None, eni
    assert iface.group(1) == "ens3" or \
        f'ATTR{{address}}=="52:54:00:00:00:02", NAME="{iface.group(1)}"' in eni
    assert "address 192.168.0.2/24" in eni
    assert "gateway 192.168.0.254" in eni


def test_one_schema_process_agrees_with_the_command(root: Path, tmp_path: Path) -> None:
    """verify validates every user-data in one cloud-init process; it calls the same files valid or not
    as `cloud-init schema -c` does, one by one."""
    broken = tmp_path / "user-data"
    broken.write_text((root / "etcd01" / "user-data").read_text().replace('permissions: "0600"', "permissions: [1]"))
    paths = [root / "etcd01" / "user-data", root / "etcd02" / "user-data", broken]
    batch = external.cloud_init_schema(paths)
    assert [batch[p] is None for p in paths] == [schema(p).returncode == 0 for p in paths] == [True, True, False]
    assert "permissions" in (batch[broken] or "")


def test_cloud_init_writes_the_crl_as_its_bytes(root: Path, tmp_path: Path) -> None:
    """The seed carries pki/crl.der (DER, not text) as base64; Debian's real cloud-init write_files module writes
    the staged file with exactly the CRL's bytes, whose sha256 the install step checks. Only the paths are moved
    under tmp_path; the entry is the one user-data carries."""
    user_data = yaml.safe_load((root / "etcd01" / "user-data").read_text())
    entry = next(e for e in user_data["write_files"] if e["path"].endswith("/crl.der"))
    script = ("import json, sys\nfrom cloudinit.config import cc_write_files\n"
              "cc_write_files.write_files('write_files', json.load(sys.stdin), 'root:root')\n")
    target = tmp_path / "crl.der"
    subprocess.run([SYSTEM_PYTHON, "-c", script], input=json.dumps([{**entry, "path": str(target)}]), text=True,
                   check=True, capture_output=True)
    expected = (root / "pki" / "crl.der").read_bytes()
    assert target.read_bytes() == expected
    install = next(e for e in user_data["write_files"] if e["path"].endswith("/etcd-seed-install"))["content"]
    assert f"{hashlib.sha256(expected).hexdigest()}  crl.der\n" in install
