"""The output tree, named once: reserved names and .gitignore follow from it, and every file a build writes
is one of its names, secret exactly when layout.is_secret says so."""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from generator import layout
from generator.errors import SpecError
from generator.spec import load_spec
from tests.helpers.cli import SECRETS, build, tree


def _ignored(path: str) -> bool:
    """Whether a path under output/<cluster>/ matches a pattern of the tree's .gitignore (as git reads these)."""
    patterns = [line for line in layout.GITIGNORE.splitlines() if line and not line.startswith("#")]
    name = path.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatch(path, p) if "/" in p else fnmatch.fnmatch(name, p) for p in patterns)


def test_every_written_file_is_named_by_the_layout_and_secret_exactly_when_ignored(workdir: Path) -> None:
    """A real build: each file's mode is 0600 exactly when is_secret says so, and .gitignore ignores exactly those
    (and the fast path's record)."""
    assert build(workdir)[0] == 0
    files = tree(workdir / "out" / "demo")
    assert {p for p in files if layout.is_secret(p)} == SECRETS
    assert {p for p, mode in files.items() if mode == layout.SECRET_MODE} == SECRETS
    assert {p for p in files if _ignored(p)} == SECRETS
    assert _ignored(layout.CACHE) and _ignored(f"pki/{layout.TEMP_PREFIX}ca.key.0123")


def test_reserved_names_are_the_stems_of_the_trees_own_files() -> None:
    """A node or client may not take the name of a file the build writes for itself (the drift that reserved
    'known-hosts' while the file is known_hosts cannot come back: the set is derived)."""
    assert {"admin", "ca", "ca-next", "ca-bundle", "rotation", "pending", "sealed", "etcdctl", "manifest",
            "known_hosts", "pki", "clients", "crl"} == layout.RESERVED_NAMES
    for path in layout.PKI_FILES:
        assert path.rsplit("/", 1)[1].split(".")[0] in layout.RESERVED_NAMES


def test_spec_reference_lists_the_reserved_names() -> None:
    """docs/spec.md names every reserved name, and none that is not reserved."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "spec.md").read_text()
    line = next(line for line in text.splitlines() if line.startswith("| `nodes[].name` |"))
    named = {part.strip("` ,") for part in line.split("not ", 1)[1].split("(")[0].replace(" or ", ", ").split(", ")}
    assert named == layout.RESERVED_NAMES


@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-._/", min_size=1, max_size=40))
def test_key_files_are_secret(path: str) -> None:
    """Whatever the path, a key file (pki/<name>.key) is secret and is_key agrees with key_name."""
    assert layout.is_key(path) == (layout.key_name(path) is not None)
    if layout.is_key(path):
        assert layout.is_secret(path)
        assert layout.key_file(layout.key_name(path) or "") == path


SECTIONS = ("", "cluster", "network", "network.ntp", "nodes.0", "etcd", "etcd.restore", "backup", "pki", "pki.ca",
            "pki.ca_next", "clients.0", "flannel", "admin", "auth")


def _known_keys() -> dict[str, set[str]]:
    """Every key the spec accepts, per section, as the spec's own error for an unknown key lists them."""
    document: dict[str, object] = {}
    for section in SECTIONS:
        target = document
        for part in [p for p in section.split(".") if p]:
            if part == "0":
                continue
            if part not in target:
                nested: dict[str, object] = {}
                target[part] = [nested] if part in ("nodes", "clients") else nested
            held = target[part]
            target = held[0] if isinstance(held, list) else held  # type: ignore[assignment]
        target["zzzzzzzz"] = 1
    with pytest.raises(SpecError) as caught:
        load_spec(yaml.safe_dump(document), base_dir=Path("/nonexistent"))
    known = {}
    for message in caught.value.messages:
        match = re.fullmatch(r"(.*?)\.?zzzzzzzz: unknown key \(known keys: (.*)\)", message)
        if match:
            known[match.group(1)] = set(match.group(2).split(", "))
    assert set(known) == set(SECTIONS), caught.value.messages
    return known


def test_spec_reference_names_every_field_the_spec_accepts() -> None:
    """docs/spec.md's field table names every key of every section that the spec accepts (no field is
    undocumented), and names no section key the spec does not accept."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "spec.md").read_text()
    rows = [line.split("|")[1] for line in text.splitlines() if line.startswith("| `")]
    documented = set(re.findall(r"`([a-z0-9_.\[\]]+)`", " ".join(rows)))
    for section, keys in _known_keys().items():
        prefix = section.replace(".0", "[]")
        for key in keys:
            full = f"{prefix}.{key}" if prefix else key
            # A row may name a sibling by its last part (`backup.enabled`, `.schedule`), or a section by its fields.
            assert full in documented or f".{key}" in documented or any(
                d.startswith((f"{full}.", f"{full}[].")) for d in documented), full
