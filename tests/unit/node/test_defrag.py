"""defrag.py: when a member's database file is worth defragmenting (the real-etcd cases are in
tests/etcd/test_maintenance.py)."""

from __future__ import annotations

import pytest
from etcd_seed_node import defrag

MIB = 1 << 20


@pytest.mark.parametrize(("size", "in_use", "expected"), [
    (100 * MIB, 50 * MIB, "50% of it free"),  # exactly the threshold
    (100 * MIB, 51 * MIB, None),  # just under it, far from the quota
    (1700 * MIB, 1690 * MIB, "the file is at 83% of the quota"),  # near the 2 GiB quota: any free page counts
    (1700 * MIB, 1700 * MIB, None),  # near the quota with nothing to reclaim: a defrag would not help
    (0, 0, None),
    (20 * 1024, 16 * 1024, None),  # a new member's file
])
def test_defrag_is_worth_it_when_half_is_free_or_the_file_nears_its_quota(size: int, in_use: int,
                                                                          expected: str | None) -> None:
    assert defrag.reason(size, in_use, 2048 * MIB, 50, 80) == expected


def test_an_active_nospace_alarm_makes_any_free_page_worth_it() -> None:
    """A member below the near-quota mark whose neighbour raised NOSPACE: the alarm clears only once every file is
    small again, so this one defragments too (seen on real etcd: 5.5 of 12.6 MiB free under a 16 MiB quota)."""
    args = (int(12.6 * MIB), int(7.1 * MIB), 16 * MIB, 50, 80)
    assert defrag.reason(*args) is None
    assert defrag.reason(*args, nospace=True) == "a NOSPACE alarm is active"
    assert defrag.reason(MIB, MIB, 16 * MIB, 50, 80, nospace=True) is None


def test_sizes_below_a_mebibyte_read_in_kibibytes() -> None:
    assert [defrag.mib(n) for n in (20480, MIB, 15 * MIB + MIB // 2)] == ["20 KiB", "1.0 MiB", "15.5 MiB"]
