"""Day 1 the way users boot: Debian 13 guests (cloud-init 25, netplan and systemd-networkd, no ifupdown),
each seed a SATA CD-ROM on a q35 machine, and the etcd tarball fetched through etcd.url from a web
server in the test network. Run alone with `make e2e E2E_K=debian13`.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers.etcd_checks import assert_all_healthy, assert_members_are_the_spec
from tests.helpers.vm import BUNDLE, HUB_IP, NEEDS, NODES, Lab, assert_node_state, booted_lab

pytestmark = NEEDS


@pytest.fixture(scope="module")
def trixie(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    assert BUNDLE.exists(), "make e2e builds vendor/ first"
    url = f"http://{HUB_IP}:8081/{BUNDLE.name}"
    with booted_lab(tmp_path_factory.mktemp("debian13"), BUNDLE, suite="trixie", url=url, cdrom=True) as lab:
        yield lab


def test_debian13_cluster_is_healthy(trixie: Lab) -> None:
    """Three Debian 13 members seeded from CD-ROMs form a healthy cluster over mutual TLS."""
    assert_all_healthy(trixie.etcdctl, NODES)
    assert_members_are_the_spec(trixie.etcdctl, trixie.spec)


@pytest.mark.parametrize("index", range(NODES))
def test_debian13_node_state(trixie: Lab, index: int) -> None:
    """Each node: the same facts as on Debian 12, a default route through netplan and networkd, the seed
    found on /dev/sr0, no ifupdown, and the tarball downloaded and checked, not read from the seed."""
    assert_node_state(trixie, index)
    vm = trixie.vms[index]
    facts = trixie.ssh(vm.ip, "sudo blkid -t LABEL=cidata -o device; command -v ifup || echo no-ifupdown; "
                              "networkctl list --no-legend; cloud-init --version 2>&1; "
                              "sudo grep 'etcd-seed: applied' /var/log/cloud-init-output.log").stdout
    assert facts.splitlines()[0] == "/dev/sr0", facts
    assert "no-ifupdown" in facts and " routable " in facts and "configured" in facts, facts
    assert "cloud-init 25." in facts, facts
    assert f"etcd-seed: applied etcd {trixie.spec.etcd.version}: etcd (none) -> {trixie.spec.etcd.version}" in facts
    log = (trixie.work / "http.log").read_text()
    assert f'"GET /{trixie.spec.etcd.tarball_name} HTTP/1.1" 200' in log and vm.ip in log, log[-2000:]
