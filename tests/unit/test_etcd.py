"""Release facts: a version is parsed once and asked what it can do; version changes follow etcd's rules."""

from __future__ import annotations

import pytest

from generator.etcd import Version, VersionChange


def v(text: str) -> Version:
    parsed = Version.parse(text)
    assert parsed is not None, text
    return parsed


@pytest.mark.parametrize(("before", "after", "allow", "change"), [
    (None, "3.5.1", False, VersionChange.SAME),
    ("3.5.1", "3.5.1", False, VersionChange.SAME),
    ("3.5.1", "3.5.16", False, VersionChange.PATCH),
    ("3.5.1", "3.6.0", False, VersionChange.MINOR),
    ("3.4.23", "3.6.0", False, VersionChange.SKIP),
    ("3.6.0", "3.5.32", False, VersionChange.DOWNGRADE),
    ("3.6.0", "3.5.32", True, VersionChange.ROLLBACK),
    ("3.6.0", "3.4.23", True, VersionChange.DOWNGRADE),
    ("3.5.16", "3.5.1", True, VersionChange.ROLLBACK),
])
def test_version_changes_follow_etcds_rules(before: str | None, after: str, allow: bool,
                                            change: VersionChange) -> None:
    """Patch and one minor up are changes etcd supports; a downgrade only as the rollback of an unfinished
    upgrade, one minor at most; skipping a minor never."""
    assert v(after).change_from(v(before) if before else None, allow) is change


@pytest.mark.parametrize(("text", "parsed"), [
    ("3.5.16", Version(3, 5, 16)), ("3.5", None), ("3.5.1\n", None), ("v3.5.1", None), ("3.5.1.0", None),
    ("3.05.1", Version(3, 5, 1)),
])
def test_parse_takes_only_a_release_version(text: str, parsed: Version | None) -> None:
    """Only MAJOR.MINOR.PATCH of digits parses; a trailing newline does not."""
    assert Version.parse(text) == parsed


def test_capabilities_by_release() -> None:
    """Every caller asks the version instead of comparing strings: etcdutl from 3.5, bump-revision from 3.5.10,
    zap logger set only for 3.4, v2 flags gone in 3.6, the upgrade floor only below 3.5.32."""
    assert not v("3.4.23").has_etcdutl and v("3.5.1").has_etcdutl
    assert not v("3.5.9").can_bump_revision and v("3.5.10").can_bump_revision
    assert v("3.4.23").extra_options == {"ETCD_LOGGER": "zap"} and v("3.5.1").extra_options == {}
    assert "ETCD_ENABLE_V2" in v("3.5.1").known_variables
    assert "ETCD_ENABLE_V2" in v("3.6.0").removed_variables and "ETCD_ENABLE_V2" not in v("3.6.0").known_variables
    assert v("3.6.0").upgrade_floor(v("3.5.16")) == Version(3, 5, 32)
    assert v("3.6.0").upgrade_floor(v("3.5.32")) is None and v("3.5.16").upgrade_floor(v("3.5.1")) is None
    assert [r.supported for r in (v("3.3.9"), v("3.4.0"), v("3.6.9"), v("3.7.0"))] == [False, True, True, False]
    assert v("3.5.16").tarball_name == "etcd-v3.5.16-linux-amd64.tar.gz"
