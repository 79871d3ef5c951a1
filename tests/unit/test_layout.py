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
from generator.etcd import Bundle
from generator.inputs import Snapshot
from generator.loader import load_spec
from generator.outputs import seed_entries
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


@pytest.mark.parametrize("name", ["ca", "ca-next", "etcd01", "etcd01.ssh", "a" * 63, "0-x"])
def test_key_names_follow_the_grammar(name: str) -> None:
    """A leaf's, a CA's or a host key's name is a key name, and its files are pki/<name>.key and .key.age."""
    assert layout.is_key_name(name)
    assert layout.key_file_name(name) == f"{name}.key"
    assert layout.key_file(name) == f"pki/{name}.key"
    assert layout.key_name(layout.key_file(name)) == name
    assert layout.sealed_path(layout.key_file_name(name)) == layout.sealed_file(layout.key_file(name)) \
        == f"pki/{name}.key.age"


@given(st.from_regex(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", fullmatch=True))
def test_every_node_or_client_name_is_a_key_name(name: str) -> None:
    """A name the spec admits (a DNS label) names a leaf's key, and a node's host key."""
    assert layout.is_key_name(name) and layout.is_key_name(layout.host_key_name(name))


@pytest.mark.parametrize("name", ["", "a" * 64, "Etcd01", "etcd01.key", "etcd01.ssh.ssh", "etcd_01", "../ca", "x/ca",
                                  "ca.crt", " ca"])
def test_other_names_are_not_key_names(name: str) -> None:
    assert not layout.is_key_name(name)
    assert layout.key_name(f"pki/{name}.key") is None


@pytest.mark.parametrize("path", ["pki/ca.crt", "pki/x/ca.key", "etcd01/ca.key", "ca.key", "pki/.key", "pki/ca.key.age",
                                  "pki/ca.KEY", "pkix/ca.key", "/pki/ca.key", f"pki/{layout.TEMP_PREFIX}ca.key.0123"])
def test_a_path_that_is_not_a_key_file_has_no_key_name(path: str) -> None:
    """A key file is directly in the keys directory, and named as KEY_NAME spells it."""
    assert layout.key_name(path) is None
    assert not layout.is_key(path)


def test_paths_in_the_keys_directory() -> None:
    assert layout.pki_path("sealed.json") == layout.SEALED_INDEX
    assert layout.pki_path(layout.CRL_NAME) == layout.CRL
    assert layout.pki_path(layout.CA_BUNDLE_NAME) == layout.CA_BUNDLE == "pki/ca-bundle.crt"
    assert layout.cert_file("etcd01") == "pki/etcd01.crt"
    assert all(layout.in_pki(p) for p in (*layout.PKI_FILES, "pki/x/y", layout.sealed_path("ca.key")))
    assert not any(layout.in_pki(p) for p in ("pki", "pkix/ca.key", layout.MANIFEST, layout.seed_file("etcd01"),
                                              "clients/x.env"))


def test_the_trust_file_is_the_ca_or_during_a_rotation_the_bundle() -> None:
    assert layout.trust_name(False) == layout.CA_CERT_NAME == "ca.crt"
    assert layout.trust_file(False) == layout.cert_file(layout.CA_NAME)
    assert layout.trust_name(True) == "ca-bundle.crt"
    assert layout.trust_file(True) == layout.CA_BUNDLE


def test_a_sealed_copy_names_its_key() -> None:
    assert layout.sealed_key("pki/ca.key.age") == "pki/ca.key"
    assert layout.sealed_key(layout.sealed_path("etcd01.ssh.key")) == "pki/etcd01.ssh.key"


@pytest.mark.parametrize("path", ["pki/ca.key", "pki/ca.crt.age", "pki/x/ca.key.age", "etcd01/ca.key.age", "ca.key.age",
                                  "pki/.age", "pki/ca.key.age.age", layout.SEALED_INDEX])
def test_a_path_that_is_not_a_sealed_key_names_none(path: str) -> None:
    assert layout.sealed_key(path) is None


def test_a_node_is_a_directory_holding_a_seed() -> None:
    assert layout.seed_file("etcd01") == "etcd01/seed.iso"
    assert layout.built_node(layout.seed_file("etcd01")) == "etcd01"


@pytest.mark.parametrize("path", ["etcd01/user-data", "etcd01/", "etcd01", "seed.iso", "/seed.iso", "a/b/seed.iso",
                                  "etcd01/seed.iso.bak", "etcd01/seed.iso/",
                                  f"etcd01/{layout.TEMP_PREFIX}seed.iso.0123"])
def test_a_path_that_is_not_a_seed_names_no_node(path: str) -> None:
    """A node's other files, its directory alone, a seed outside a node's directory or nested deeper: no node."""
    assert layout.built_node(path) is None


def test_the_seed_holds_the_nocloud_files_then_the_tarball_then_the_snapshot() -> None:
    assert layout.seed_contents(None, False) == layout.SEED_NODE_FILES == ("user-data", "meta-data", "network-config")
    assert layout.seed_contents("etcd.tar.gz", True) == (*layout.SEED_NODE_FILES, "etcd.tar.gz", "snapshot.db")
    assert layout.seed_contents(None, True) == (*layout.SEED_NODE_FILES, layout.RESTORE_ON_SEED)
    assert layout.seed_contents("", False) == layout.SEED_NODE_FILES


@pytest.mark.parametrize(("bundle_data", "snapshot"), [(b"tarball", None), (None, None), (b"tarball", b"snap"),
                                                       (None, b"snap")])
def test_the_build_writes_on_the_seed_what_the_layout_lists(bundle_data: bytes | None, snapshot: bytes | None) -> None:
    """What a build puts on the ISO is, name for name and in order, what verify expects there."""
    texts = {f.name: f"{f.name}\n" for f in layout.NODE_FILES}
    bundle = Bundle("etcd-v3.5.1-linux-amd64.tar.gz", "0" * 64, bundle_data)
    entries = seed_entries(texts, bundle, Snapshot("0" * 64, snapshot) if snapshot is not None else None)
    tarball = bundle.name if bundle_data is not None else None
    assert tuple(e.name for e in entries) == layout.seed_contents(tarball, snapshot is not None)
    assert {e.name: e.data for e in entries}.get(layout.RESTORE_ON_SEED) == snapshot


@pytest.mark.parametrize(("path", "temp"), [(f"pki/{layout.TEMP_PREFIX}ca.key.0123", True),
                                            (f"{layout.TEMP_PREFIX}manifest.json.0123", True),
                                            ("pki/ca.key", False), (f"a{layout.TEMP_PREFIX}x", False)])
def test_temporary_files_are_named_by_their_prefix(path: str, temp: bool) -> None:
    assert layout.is_temp(path) is temp
    assert not temp or layout.is_secret(path)


def test_the_files_kept_outside_the_manifest() -> None:
    """The manifest, the sealed index, the fast path's record and a listed key's sealed copy; nothing else."""
    listed = {"pki/ca.key", "pki/ca.crt", "etcd01/seed.iso"}
    for path in (layout.MANIFEST, layout.SEALED_INDEX, layout.CACHE, "pki/ca.key.age"):
        assert layout.kept_unlisted(path, listed), path
    for path in ("pki/admin.key.age", "pki/ca.crt.age", "etcd01/seed.iso.age", layout.JOURNAL,
                 f"pki/{layout.TEMP_PREFIX}ca.key.0123", "pki/notes.txt", "etcd01/extra", layout.GITIGNORE_NAME):
        assert not layout.kept_unlisted(path, listed), path


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
