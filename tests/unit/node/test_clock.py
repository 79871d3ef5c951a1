"""clock.py: the bounded wait for a synchronised clock, and this kernel's adjtimex(2) read as the job reads it."""

from __future__ import annotations

import ctypes
import time
from pathlib import Path

import pytest
from etcd_seed_node import clock

from tests.helpers import node_package


def test_clock_wait_ends_when_the_kernel_says_synchronised(capsys: pytest.CaptureFixture[str]) -> None:
    answers = iter([False, False, True])
    assert clock.wait(30, is_synchronised=lambda: next(answers), pause_s=0.01) == 0
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "etcd-seed: clock: not synchronised yet; waiting up to 30 s for the time servers in network.ntp"
    assert lines[1].startswith("etcd-seed: clock: synchronised after 0 s; now ") and len(lines) == 2
    with pytest.raises(StopIteration):
        next(answers)  # asked exactly three times: it stopped at the first yes


def test_clock_wait_is_bounded_and_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    asked: list[float] = []

    def never() -> bool:
        asked.append(time.monotonic())
        return False

    assert clock.wait(1, is_synchronised=never, pause_s=0.05) == 0
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2
    assert lines[1].startswith("etcd-seed: WARNING: clock: not synchronised after 1 s; starting anyway")
    assert len(asked) > 2


def test_clock_wait_without_time_servers_or_a_readable_clock(capsys: pytest.CaptureFixture[str]) -> None:
    assert clock.wait(0, is_synchronised=lambda: pytest.fail("asked without network.ntp")) == 0
    assert capsys.readouterr().err == "etcd-seed: clock: no time servers in the seed (network.ntp); not waiting\n"

    def broken() -> bool:
        raise OSError(1, "Operation not permitted")

    assert clock.wait(5, is_synchronised=broken) == 0
    assert capsys.readouterr().err.startswith("etcd-seed: WARNING: clock: cannot read the kernel's clock state")


def test_clock_reads_this_kernel(tmp_path: Path) -> None:
    """The real adjtimex(2): the maximum error lies within the kernel's 16 s cap, and at the cap the kernel has also
    set STA_UNSYNC (it sets both together), which a struct laid out wrong would not show. Then the `clock` job as
    the unit runs it, with a 1 s bound, ends with a line that agrees with this kernel's state."""
    timex = clock.Timex()
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.adjtimex(ctypes.byref(timex)) >= 0
    assert 0 <= timex.maxerror <= clock.UNSYNCED_MAXERROR_US
    if timex.maxerror == clock.UNSYNCED_MAXERROR_US:
        assert timex.status & 0x40, hex(timex.status)  # STA_UNSYNC
    node_package.install(tmp_path)
    (tmp_path / "etc/etcd").mkdir(parents=True)
    (tmp_path / "etc/etcd/member.json").write_text(
        '{"name": "etcd01", "peer_url": "https://10.0.0.1:2380", "client_url": "https://10.0.0.1:2379", '
        '"timeout_s": 5, "refused_pause_s": 0, "clock_wait_s": 1}')
    done = node_package.run(tmp_path, "clock")
    assert done.returncode == 0, done.stderr
    expected = "clock: synchronised" if clock.synchronised() else "WARNING: clock: not synchronised after 1 s"
    assert done.stderr.splitlines()[-1].startswith("etcd-seed: " + expected), done.stderr
