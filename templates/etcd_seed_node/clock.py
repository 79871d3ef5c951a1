"""clock: with network.ntp, wait before etcd (and the backup) starts until the kernel reports the clock
synchronised, for at most clock_wait_s; it succeeds either way. Certificate validity, leases and backup
names assume the clock is right."""

from __future__ import annotations

import ctypes
import time
from collections.abc import Callable

from etcd_seed_node.transport import BOUNDED, Etcd, Meta, say


class Timex(ctypes.Structure):
    """The head of struct timex (linux/timex.h) as adjtimex(2) fills it; the rest is spare room."""

    _fields_ = [("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
                ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long), ("status", ctypes.c_int),
                ("spare", ctypes.c_char * 512)]


# The kernel's maximum error estimate stays at this cap (16 s, in us) until a time daemon sets the clock.
UNSYNCED_MAXERROR_US = 16_000_000


def synchronised() -> bool:
    """The test timedatectl's NTPSynchronized makes: adjtimex(2) with modes 0 changes nothing and reads the
    kernel's maximum error, below its 16 s cap only once a time daemon has set the clock.
    https://man7.org/linux/man-pages/man2/adjtimex.2.html"""
    timex = Timex()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.adjtimex(ctypes.byref(timex)) < 0:
        raise OSError(ctypes.get_errno(), "adjtimex")
    maxerror: int = timex.maxerror
    return maxerror < UNSYNCED_MAXERROR_US


def wait(wait_s: int, is_synchronised: Callable[[], bool] = synchronised, pause_s: float = 1.0) -> int:
    """Wait at most wait_s for a synchronised clock and say how it went; a bound, so 0 either way."""
    if wait_s <= 0:
        say("clock: no time servers in the seed (network.ntp); not waiting")
        return 0
    start, asked = time.monotonic(), False
    while True:
        try:
            done = is_synchronised()
        except OSError as exc:
            say(f"WARNING: clock: cannot read the kernel's clock state ({exc}); not waiting")
            return 0
        waited = time.monotonic() - start
        if done:
            say(f"clock: synchronised after {waited:.0f} s; now {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}")
            return 0
        if not asked:  # on the console too: why this boot pauses here
            say(f"clock: not synchronised yet; waiting up to {wait_s} s for the time servers in network.ntp")
            asked = True
        if waited >= wait_s:
            say(f"WARNING: clock: not synchronised after {wait_s} s; starting anyway at "
                f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} (check network.ntp and the time daemon)")
            return 0
        time.sleep(pause_s)


def clock(etcd: Etcd) -> int:
    return wait(int(etcd.cfg["clock_wait_s"]))


META = Meta(job="clock", unit="etcd-seed-clock.service", schedule="before etcd and the backup, at boot",
            retry=BOUNDED, run=clock)
