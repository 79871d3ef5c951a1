"""Journal: how a build's writes reach the tree, and how a run killed among them is completed.

A run stages every file beside its final name, records the renames (and the keys it made, the sealed
copies it moves, the files it deletes) in the journal, renames, finishes, and removes the journal. A
run that finds a journal with renames completes them first; one with keys only (a run killed before
its renames) hands its keys to the plan.
"""

from __future__ import annotations

import json
from pathlib import Path

from . import fs, layout, rotation, sealed
from .errors import OutputError
from .layout import CA_NAME, DELETABLE, HEX64, JOURNAL
from .plan import BuildPlan, FileStatus

_CHECK_BY_HAND = f"check {layout.PKI}/ by hand, then remove {JOURNAL}"


def _document(data: bytes | None) -> dict[str, object] | None:
    if data is None:
        return None
    try:
        document = json.loads(data)
    except (ValueError, RecursionError):
        raise OutputError(f"{JOURNAL}: not valid JSON; an interrupted run left it damaged",
                          hint=_CHECK_BY_HAND) from None
    if not isinstance(document, dict):
        raise OutputError(f"{JOURNAL}: must be a JSON object", hint=_CHECK_BY_HAND)
    return document


def pending_keys(data: bytes | None) -> dict[str, str]:
    """The keys an interrupted run was putting in place, by name.

    Raises:
        OutputError: damaged, or a run whose renames only a build may complete (plan reads, never writes).
    """
    document = _document(data)
    if document is None:
        return {}
    if "renames" in document:
        raise OutputError(f"{JOURNAL}: a build was interrupted; run it (or the same rotate-ca step) again to "
                          "complete it")
    keys = document.get("keys")
    if not isinstance(keys, dict) or not all(
            isinstance(k, str) and layout.is_key_name(k) and isinstance(v, str) and HEX64.fullmatch(v)
            for k, v in keys.items()):
        raise OutputError(f"{JOURNAL}: keys: must map names to 64 hex digits",
                          hint=_CHECK_BY_HAND)
    return dict(keys)


def _write_order(path: str) -> int:
    # Keys before certificates, the CA key first: a run killed in between leaves a key
    # without its certificate, which the next run completes, never the other way round.
    if path == layout.key_file(CA_NAME):
        return 0
    if layout.is_key(path):
        return 1
    return 2 if layout.in_pki(path) else 3


def apply(root: Path, plan: BuildPlan) -> list[str]:
    """Write what the plan changes under root, which the caller holds locked.

    Returns:
        Stale temporary files of an earlier, killed run that were removed.
    """
    removed = fs.remove_stale_temps(root)
    fs.make_dirs(root, {layout.PKI: layout.SECRET_DIR_MODE,
                        **({layout.CLIENTS: layout.PUBLIC_DIR_MODE} if plan.spec.clients else {}),
                        **{node.name: layout.PUBLIC_DIR_MODE for node in plan.spec.nodes}})
    writes = [fs.Write(f.path, f.mode, f.make, f.streamed)
              for f in sorted(plan.changed, key=lambda f: _write_order(f.path))
              if f.status is not FileStatus.MODE]
    for f in plan.changed:
        if f.status is FileStatus.MODE:
            fs.chmod(root / f.path, f.mode)
    if plan.manifest_status is not FileStatus.UNCHANGED:
        writes.append(fs.Write(layout.MANIFEST, layout.PUBLIC_MODE, fs.const(plan.manifest_bytes)))
    if writes or plan.deletes or plan.sealed_moves:
        record = {"keys": plan.new_keys, "deletes": plan.deletes, "sealed_moves": plan.sealed_moves,
                  "step": plan.step}
        fs.stage_and_commit(root, writes, JOURNAL, record)
        _finish(root, plan.sealed_moves, plan.deletes)
    return removed


def _finish(root: Path, sealed_moves: list[tuple[str, str]], deletes: list[str]) -> None:
    """What a run does after its renames; each step can be repeated, so a killed run is continued."""
    pki_dir = root / layout.PKI
    for source, target in sealed_moves:
        copy = layout.sealed_path(source)
        data = fs.read_regular(root / copy, fs.LIMITS["pem"], copy, OutputError, missing_ok=True)
        if data is not None:
            fs.write_file(root / layout.sealed_path(target), data, layout.PUBLIC_MODE)
        index = dict(sealed.read_index(pki_dir))
        if source in index:
            index[target] = index.pop(source)
            sealed.write_index(pki_dir, index)
        fs.remove(root / copy)
    for path in deletes:  # after the manifest that no longer lists them is in place
        fs.remove(root / path)
    fs.remove(root / JOURNAL)


# The one sealed move (rotate-ca finish), as key file names in the keys directory.
SEALED_MOVE = (layout.key_file_name(layout.NEXT_CA), layout.key_file_name(CA_NAME))
_DELETES = DELETABLE | {layout.sealed_file(p) for p in DELETABLE if layout.is_key(p)}


def interrupted_step(root: Path) -> str | None:
    """The rotation step a run killed among its renames was taking (None: no such run, or a plain build). Its gate
    was passed, or forced, before the run began, so running the same step again completes it without asking."""
    document = _document(fs.read_optional(root / JOURNAL, JOURNAL))
    step = document.get("step") if document is not None and "renames" in document else None
    return step if step in rotation.STEPS else None


def recover(root: Path) -> tuple[bool, str | None]:
    """Complete a run that was killed among its renames, as its journal lists them.

    Returns:
        Whether there was one to complete, and the rotation step it was taking (None for a plain build).

    Raises:
        OutputError: a journal of another shape (it is a file in the output tree, so it is checked).
    """
    document = _document(fs.read_optional(root / JOURNAL, JOURNAL))
    if document is None or "renames" not in document:
        return False, None  # none, or one from before renames were journalled: the plan adopts its keys
    hint = f"check the output tree by hand, then remove {JOURNAL}"
    renames, moves, deletes, step = (document.get("renames"), document.get("sealed_moves"), document.get("deletes"),
                                     document.get("step"))
    if not (isinstance(renames, list) and all(isinstance(r, list) and len(r) == 2
                                              and all(isinstance(x, str) for x in r) for r in renames)):
        raise OutputError(f"{JOURNAL}: renames: must be a list of [temporary, final] paths", hint=hint)
    if not (isinstance(moves, list) and all(isinstance(m, list) and tuple(m) == SEALED_MOVE for m in moves)):
        raise OutputError(f"{JOURNAL}: sealed_moves: must name only {SEALED_MOVE[0]} -> {SEALED_MOVE[1]}", hint=hint)
    if not (isinstance(deletes, list) and all(isinstance(d, str) and d in _DELETES for d in deletes)):
        raise OutputError(f"{JOURNAL}: deletes: may name only the rotation's files", hint=hint)
    if step is not None and step not in rotation.STEPS:
        raise OutputError(f"{JOURNAL}: step: must be one of {', '.join(rotation.STEPS)}", hint=hint)
    fs.finish_renames(root, [(a, b) for a, b in renames])
    _finish(root, [(a, b) for a, b in moves], deletes)
    return True, step
