"""Plan: what a build would do, computed in memory before anything touches the disk; build makes it and
applies it, notes words it."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import BinaryIO

from . import fields
from .decisions import Decisions
from .pki import PkiState, renew_at
from .spec import Spec


class FileStatus(StrEnum):
    """What a build does, or would do, to one file."""

    CREATE = "create"
    UPDATE = "update"
    MODE = "mode"  # permissions only
    UNCHANGED = "unchanged"
    DELETE = "delete"



@dataclass(frozen=True)
class PlannedFile:
    """One file of output/<cluster>/: what it will hold, and what the build does to it."""

    path: str
    mode: int
    sha256: str
    size: int
    status: FileStatus
    make: Callable[[], bytes] | Callable[[BinaryIO], None]
    public_key_sha256: str | None = None
    epoch: int | None = None
    streamed: bool = False  # make writes into a file (a seed ISO) instead of returning bytes


@dataclass(frozen=True)
class BuildPlan:
    """Everything a build would write, computed in memory: nothing has touched the disk yet."""

    spec: Spec
    decided: Decisions
    pki: PkiState
    files: list[PlannedFile]
    manifest_bytes: bytes
    manifest_status: FileStatus
    new_keys: dict[str, str] = field(default_factory=dict)  # name -> public key sha256, for the journal
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    reseed: list[str] = field(default_factory=list)  # nodes whose seed changed, in rolling order
    deletes: list[str] = field(default_factory=list)  # paths under output/<cluster>/, from DELETABLE
    # Sealed copies that follow their key to a new name (the next CA's to the CA's at the end of a CA
    # rotation), as key file names in the keys directory.
    sealed_moves: list[tuple[str, str]] = field(default_factory=list)
    step: str | None = None  # the rotation step taken, for the journal
    crl_next_update: dt.datetime | None = None  # the CRL's nextUpdate
    # The spec fields changed since the last build, each with how such a change reaches the nodes.
    field_changes: list[fields.Change] = field(default_factory=list)

    @property
    def changed(self) -> list[PlannedFile]:
        return [f for f in self.files if f.status is not FileStatus.UNCHANGED]

    @property
    def written(self) -> int:
        """How many files applying this plan writes, moves or deletes."""
        return (len(self.changed) + (self.manifest_status is not FileStatus.UNCHANGED) + len(self.deletes)
                + len(self.sealed_moves))

    @property
    def renew_at(self) -> float:
        """When a build must look again: the first certificate to come within renew_before_days of expiry."""
        certificates = [ca.cert for ca in self.pki.trusted] + [c.cert for c in self.pki.leaves.values()]
        due = [renew_at(c, self.spec.pki) for c in certificates]
        if self.crl_next_update is not None:
            due.append(self.crl_next_update - dt.timedelta(days=self.spec.pki.renew_before_days))
        return min(due).timestamp()
