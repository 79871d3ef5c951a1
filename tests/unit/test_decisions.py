"""What a build settles that the spec leaves open: auth on, off or left alone, and the cluster token."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from generator.decisions import decide
from generator.spec import Spec
from tests.helpers.specs import fake_snapshot, parse, put, spec_yaml

SNAPSHOT_SHA = "ab" * 32


def _spec(tmp_path: Path, **values: object) -> Spec:
    data = yaml.safe_load(spec_yaml())
    for path, value in values.items():
        put(data, path.replace("__", "."), value)
    (tmp_path / "snap.db").write_bytes(fake_snapshot())
    return parse(yaml.safe_dump(data), base_dir=tmp_path)


def test_a_restore_runs_under_a_token_of_its_snapshot(tmp_path: Path) -> None:
    spec = _spec(tmp_path, etcd__restore={"snapshot": "snap.db", "bump_revision": 0})
    decided = decide(spec, snapshot_sha256=SNAPSHOT_SHA)
    assert decided.cluster_token == f"{spec.etcd.token}-r{SNAPSHOT_SHA[:12]}"
    assert decided.snapshot_sha256 == SNAPSHOT_SHA


def test_a_restore_is_not_decided_before_its_snapshot_is_read(tmp_path: Path) -> None:
    spec = _spec(tmp_path, etcd__restore={"snapshot": "snap.db", "bump_revision": 0})
    with pytest.raises(ValueError, match=r"etcd\.restore"):
        decide(spec)


def test_a_snapshot_the_last_build_restored_is_not_the_token_of_a_spec_without_restore(tmp_path: Path) -> None:
    """verify passes the manifest's snapshot whatever the spec says: only etcd.restore makes it count."""
    spec = _spec(tmp_path)
    decided = decide(spec, True, True, SNAPSHOT_SHA)
    assert (decided.cluster_token, decided.snapshot_sha256) == (spec.etcd.token, None)


@pytest.mark.parametrize(("wanted", "built_before", "was", "enabled", "managed"), [
    (None, False, None, True, True),  # a new cluster: on
    (None, True, False, False, True),  # as the last build left it
    (None, True, True, True, True),
    (None, True, None, None, False),  # built before auth was managed: left alone
    (False, False, None, False, True),  # the spec's word wins
    (True, True, None, True, True),
])
def test_auth_is_decided_from_the_spec_then_the_last_build(tmp_path: Path, wanted: bool | None, built_before: bool,
                                                           was: bool | None, enabled: bool | None,
                                                           managed: bool) -> None:
    spec = _spec(tmp_path, **({"auth": {"enabled": wanted}} if wanted is not None else {}))
    decided = decide(spec, built_before, was)
    assert (decided.auth.enabled, decided.auth.managed) == (enabled, managed)
    assert decided.auth.on is (managed and enabled is not False)


def test_a_restore_seed_is_not_rendered_from_decisions_without_its_snapshot(tmp_path: Path) -> None:
    """Decisions made by hand without the snapshot's digest would render a seed with no restore step."""
    from generator.decisions import Decisions
    from generator.errors import TemplateError
    from generator.render import make_environment, render_node
    from tests.helpers.specs import fake_pem

    spec = _spec(tmp_path, etcd__restore={"snapshot": "snap.db", "bump_revision": 0})
    decided = decide(spec, snapshot_sha256=SNAPSHOT_SHA)
    hand_made = Decisions(auth=decided.auth, cluster_token=decided.cluster_token)
    with pytest.raises(TemplateError, match="snapshot sha256"):
        render_node(make_environment(), spec, hand_made, spec.nodes[0], fake_pem("etcd01"), "0" * 64)
