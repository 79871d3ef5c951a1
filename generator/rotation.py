"""Rotation: the three phases that move a cluster from one CA to another without losing quorum.

etcd reads its trusted-CA file only when it starts (https://github.com/etcd-io/etcd/issues/11555),
so the trust is widened first, then every leaf moves to the new CA, then the old CA is dropped:
  1. trust both: every node trusts the old and the new CA; certificates stay as they are;
  2. issue: every leaf is issued from the new CA (keys are kept); trust stays old + new;
  3. trust the new CA only; the old CA's key is deleted.
Each phase is an ordinary build whose seeds are rolled one node at a time before the next phase.
The state lives in the tree (layout.ROTATION), listed in manifest.json like every file the build writes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from enum import IntEnum

from .errors import MaterialError, OutputError
from .layout import HEX64
from .layout import ROTATION as NAME


class Phase(IntEnum):
    """Where a rotation stands; NONE when no rotation was ever begun."""

    NONE = 0
    TRUST_BOTH = 1
    ISSUE = 2
    TRUST_NEW = 3


# The command of each step and the phase it moves to, in order: a step is taken only from the phase before it.
STEPS = {"begin": Phase.TRUST_BOTH, "issue": Phase.ISSUE, "finish": Phase.TRUST_NEW}


@dataclass(frozen=True)
class Rotation:
    """The phase, and the sha256 fingerprints of the CA rotated from and the CA rotated to."""

    phase: Phase = Phase.NONE
    old_ca: str = ""
    new_ca: str = ""

    @property
    def in_progress(self) -> bool:
        """Phases 1 and 2: two CAs are trusted and the next CA's files exist."""
        return self.phase in (Phase.TRUST_BOTH, Phase.ISSUE)


def target(current: Rotation, step: str | None) -> Phase:
    """The phase a build writes: the current one, or the one `step` moves to.

    Raises:
        MaterialError: the step would skip a phase or repeat one.
    """
    if step is None:
        return current.phase
    want = STEPS[step]
    allowed_from = (Phase.NONE, Phase.TRUST_NEW) if want is Phase.TRUST_BOTH else (Phase(want - 1),)
    if current.phase in allowed_from:
        return want
    if current.phase is Phase.NONE or current.phase is Phase.TRUST_NEW:
        why = "no CA rotation is in progress; it starts with 'rotate-ca begin'"
    else:
        later = next(s for s, p in STEPS.items() if p == current.phase + 1)
        why = (f"the rotation is in phase {current.phase:d} ({describe(current.phase)}); the next step is "
               f"'rotate-ca {later}'")
    raise MaterialError(f"rotate-ca {step}: {why}; a phase cannot be skipped or repeated")


def describe(phase: Phase) -> str:
    return {Phase.TRUST_BOTH: "trust both CAs", Phase.ISSUE: "issue from the new CA",
            Phase.TRUST_NEW: "trust only the new CA"}.get(phase, "no rotation")


def parse(data: bytes | None, recorded_sha256: str | None) -> Rotation:
    """Read the rotation state; it must be the file the last build wrote (manifest.json lists its sha256).

    Raises:
        OutputError: damaged, changed by hand, or missing while the manifest lists it.
    """
    hint = "restore it from git (it is committed with the rest), or from the last build's tree"
    if data is None:
        if recorded_sha256 is not None:
            raise OutputError(f"{NAME}: missing, but manifest.json lists it; refusing to guess the rotation's phase",
                              hint=hint)
        return Rotation()
    if recorded_sha256 != hashlib.sha256(data).hexdigest():
        raise OutputError(f"{NAME}: differs from the file manifest.json lists; refusing to act on a rotation "
                          "state this tool did not write", hint=hint)
    try:
        document = json.loads(data)
    except (ValueError, RecursionError):
        raise OutputError(f"{NAME}: not valid JSON", hint=hint) from None
    if not isinstance(document, dict) or set(document) != {"phase", "step", "old_ca", "new_ca"}:
        raise OutputError(f"{NAME}: must hold exactly phase, step, old_ca and new_ca", hint=hint)
    phase, old, new = document["phase"], document["old_ca"], document["new_ca"]
    if not (isinstance(phase, int) and not isinstance(phase, bool) and 1 <= phase <= 3):
        raise OutputError(f"{NAME}: phase: must be 1, 2 or 3", hint=hint)
    for key, value in (("old_ca", old), ("new_ca", new)):
        if not (isinstance(value, str) and HEX64.fullmatch(value)):
            raise OutputError(f"{NAME}: {key}: must be a sha256 fingerprint (64 hex digits)", hint=hint)
    return Rotation(Phase(phase), old, new)


def render(rotation: Rotation) -> bytes:
    """The rotation state's file (layout.ROTATION) for a rotation in any phase but NONE."""
    document = {"phase": int(rotation.phase), "step": describe(rotation.phase),
                "old_ca": rotation.old_ca, "new_ca": rotation.new_ca}
    return (json.dumps(document, indent=2, sort_keys=True) + "\n").encode()
