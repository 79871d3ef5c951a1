"""Day 1 the way users boot: Debian 13 guests (cloud-init 25, netplan and systemd-networkd, no ifupdown),
each seed a SATA CD-ROM on a q35 machine, the etcd tarball fetched through etcd.url from a web
server in the test network, and the clock from a time server there (network.ntp), with each guest's
RTC a day behind. Run alone with `make e2e E2E_K=debian13`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest

from tests.helpers.etcd_checks import assert_all_healthy, assert_members_are_the_spec
from tests.helpers.vm import (
    BUNDLE,
    CLOCK_WAITING,
    HUB_IP,
    NEEDS,
    NODES,
    Lab,
    assert_node_state,
    booted_lab,
)

pytestmark = NEEDS


@pytest.fixture(scope="module")
def trixie(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    assert BUNDLE.exists(), "make e2e builds vendor/ first"
    url = f"http://{HUB_IP}:8081/{BUNDLE.name}"
    with booted_lab(tmp_path_factory.mktemp("debian13"), BUNDLE, suite="trixie", url=url, cdrom=True,
                    ntp=True) as lab:
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


STAMP = re.compile(r"^\[\s*([0-9.]+)\] (.*)$")  # journalctl -o short-monotonic: seconds since this boot


def _first(journal: list[tuple[float, str]], text: str) -> float:
    found = [at for at, line in journal if text in line]
    assert found, f"no {text!r} in the journal:\n" + "\n".join(line for _, line in journal)
    return found[0]


def test_debian13_clock_synchronised_before_etcd_started(trixie: Lab) -> None:
    """cloud-init's ntp module points systemd-timesyncd at the hub; each node's clock step holds etcd until
    timesyncd has set the clock from it (the RTC was a day behind, older than the certificates), and says so."""
    waited = []
    for vm in trixie.vms:
        done = trixie.ssh(vm.ip, "sudo journalctl -b -o short-monotonic --no-pager -u systemd-timesyncd.service "
                                 "-u etcd-seed-clock.service -u etcd.service; echo; date +%s; "
                                 "sudo grep -h -e 'NTP client' -e 'cc_ntp' /var/log/cloud-init.log | cut -c1-300; "
                                 "cat /etc/systemd/timesyncd.conf.d/cloud-init.conf")
        assert done.returncode == 0, done.stderr
        now = time.time()
        text, after = done.stdout.split("\n\n", 1)
        journal = [(float(m.group(1)), m.group(2)) for m in map(STAMP.match, text.splitlines()) if m]
        synced = _first(journal, f"Contacted time server {HUB_IP}:123")
        said = _first(journal, "etcd-seed: clock: synchronised after")
        started = _first(journal, "Started etcd.service")
        assert synced <= said <= started, (synced, said, started)
        assert not [line for _, line in journal if "WARNING: clock" in line]
        guest = int(after.split("\n", 1)[0])
        assert abs(guest - now) < 15, f"{vm.name}: guest clock {guest}, host {now:.0f}"
        assert f"NTP={HUB_IP}" in after, after
        if any(CLOCK_WAITING in line for _, line in journal):
            waited.append(vm.name)
        print(f"\nbench: {vm.name}: time server contacted at {synced:.1f} s, clock step done at {said:.1f} s, "
              f"etcd started at {started:.1f} s (seconds since boot); guest clock off by {guest - now:+.0f} s")
        print("\n".join(line for _, line in journal if "etcd-seed: clock" in line or "time server" in line))
        print("\n".join(line for line in after.splitlines() if "ntp" in line.lower())[:1500])
    assert waited, "no node's clock step waited: the time server was up before any asked"
