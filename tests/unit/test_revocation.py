"""The CRL's life, as a pure function of the time: reused while it lists the same serials, is its signer's and is
not due; issued again (numbered one past the old) when any of that changes."""

from __future__ import annotations

import datetime as dt

from generator import certs
from generator.manifest import Revoked
from generator.revocation import crl

NOW = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC)
ENTRY = Revoked(serial="1f", name="reader", not_after="2027-11-30T00:00:00Z", revoked_at="2026-11-30T12:00:00Z",
                reason="revoked in the spec")


def _ca(name: str) -> certs.CA:
    return certs.create_ca(name, None, None, 3650, certs.generate_key("ecdsa-p256"), NOW)


def test_crl_is_reused_until_due_then_issued_again() -> None:
    ca = _ca("one")
    first = crl(None, (ENTRY,), ca, NOW, days=30, renew_before_days=10)
    assert first.issued and certs.read_crl(first.der, ca.cert) is not None
    read = certs.read_crl(first.der, ca.cert)
    assert read is not None and read.serials == {0x1F} and read.number == 1
    later = crl(first.der, (ENTRY,), ca, NOW + dt.timedelta(days=19), days=30, renew_before_days=10)
    assert not later.issued and later.der == first.der
    due = crl(first.der, (ENTRY,), ca, NOW + dt.timedelta(days=21), days=30, renew_before_days=10)
    read = certs.read_crl(due.der, ca.cert)
    assert due.issued and read is not None and read.number == 2
    assert read.next_update == NOW + dt.timedelta(days=51)


def test_crl_is_issued_again_for_another_list_signer_or_renew() -> None:
    ca, other = _ca("one"), _ca("two")
    first = crl(None, (ENTRY,), ca, NOW, days=30, renew_before_days=10)
    assert crl(first.der, (), ca, NOW, 30, 10).issued
    moved = crl(first.der, (ENTRY,), other, NOW, 30, 10)
    assert moved.issued and certs.read_crl(moved.der, ca.cert) is None and certs.read_crl(moved.der, other.cert)
    assert crl(first.der, (ENTRY,), ca, NOW, 30, 10, renew=True).issued
    assert crl(b"not a crl", (ENTRY,), ca, NOW, 30, 10).issued
