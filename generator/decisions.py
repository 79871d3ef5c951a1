"""Decisions: what a build settles that the spec leaves open, from what the build finds (the previous
build's manifest, the restore snapshot).

A `Spec` says only what cluster.yaml says. Whatever reads a settled value takes a `Decisions`, made once per
build (and by verify, from the manifest that build wrote), so no reader sees a half-decided spec.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import auth
from .spec import Spec


@dataclass(frozen=True)
class Decisions:
    auth: auth.Decision
    # ETCD_INITIAL_CLUSTER_TOKEN: a restore starts a new cluster under a token of its own, so that a surviving
    # member of the old cluster can never talk to the new one.
    cluster_token: str
    snapshot_sha256: str | None = None  # of the restore snapshot, read and checked; None without etcd.restore


def decide(spec: Spec, built_before: bool = False, auth_was: bool | None = None,
           snapshot_sha256: str | None = None) -> Decisions:
    """The decisions for `spec`; the defaults are a new cluster's.

    Args:
        built_before: a previous build wrote this cluster's tree.
        auth_was: auth.enabled as the previous build recorded it; None: it did not manage auth.
        snapshot_sha256: the restore snapshot's digest, once read and checked; needed with etcd.restore.

    Raises:
        ValueError: etcd.restore without the snapshot's digest (a bug in the caller).
    """
    token, snapshot = spec.etcd.token, None
    if spec.etcd.restore is not None:
        if snapshot_sha256 is None:
            raise ValueError("etcd.restore: the snapshot's sha256 is needed to decide the cluster token")
        token, snapshot = f"{token}-r{snapshot_sha256[:12]}", snapshot_sha256
    return Decisions(auth=auth.decide(spec, built_before, auth_was), cluster_token=token, snapshot_sha256=snapshot)
