"""The field table: the docs' table is made from it, the loader takes its keys from it, every field's type is
checked, and the digests that `plan` compares follow a list item by its name."""

from __future__ import annotations

import copy
import os
from typing import Any

import pytest
import yaml

from generator import fields
from generator.errors import OutputError, SpecError
from generator.loader import field_values, load_spec
from generator.manifest import parse_manifest
from tests.helpers.specs import FULL_SPEC, ROOT, put

DOCS = ROOT / "docs" / "spec.md"
START = "<!-- made from generator/fields.py: tests/unit/test_fields.py checks it; FIX_DOCS=1 rewrites it -->\n"
END = "<!-- end of the table made from generator/fields.py -->\n"

FULL = FULL_SPEC


def _concrete(path: str) -> str:
    """A table path in FULL: its second client (the one that sets every field), every other list's first item."""
    return path.replace("clients[]", "clients.1").replace("[]", ".0")


# A field and the one it excludes ("give either bundle or url, not both").
EXCLUDES = {"etcd.bundle": "etcd.url", "clients[].access[].key": "clients[].access[].prefix"}


def _get(data: Any, path: str) -> Any:
    for part in path.split("."):
        data = data[int(part)] if isinstance(data, list) else data[part]
    return data


def test_the_docs_table_is_made_from_the_field_table() -> None:
    text = DOCS.read_text()
    assert START in text and END in text, "docs/spec.md lost the markers of its field table"
    before, rest = text.split(START)
    table, after = rest.split(END)
    if os.environ.get("FIX_DOCS"):
        DOCS.write_text(before + START + fields.markdown() + END + after)
        return
    assert table == fields.markdown(), "docs/spec.md's field table differs from generator/fields.py; FIX_DOCS=1"


def test_every_field_has_a_loaded_value_the_digests_record() -> None:
    """Each field but the files the build reads has a value in the loaded spec (a field the loader drops or
    renames is seen here), and a list of grants is one value. (FULL restores nothing: a restore reads a file.)"""
    spec, _ = load_spec(yaml.safe_dump(FULL), base_dir=ROOT)
    recorded = {fields.table_path(path) for path in field_values(spec)}
    wanted = {p for row in fields.FIELDS if row.hostile != fields.READ_PATH
              and row.section not in ("clients[].access[]", "etcd.restore") for p in row.paths}
    assert recorded == wanted | {fields.ORDER}


@pytest.mark.parametrize("path", [p for row in fields.FIELDS for p in row.paths])
def test_every_field_refuses_a_value_of_the_wrong_type_by_name(path: str) -> None:
    """A mapping where a field wants text, a number, a boolean or a list: refused, naming the field."""
    data = copy.deepcopy(FULL)
    if path in EXCLUDES:  # FULL sets the field this one excludes
        *parent, last = _concrete(EXCLUDES[path]).split(".")
        put(data, ".".join(parent), {k: v for k, v in _get(data, ".".join(parent)).items() if k != last})
    put(data, _concrete(path), {"x": [1]})
    with pytest.raises(SpecError) as refused:
        load_spec(yaml.safe_dump(data), base_dir=ROOT)
    assert any(m.startswith(_concrete(path) + ":") for m in refused.value.messages), refused.value.messages


TYPED = [(path, kind) for row in fields.FIELDS for path, kind in zip(row.paths, row.types, strict=False) if kind]


def test_every_type_covers_its_row_and_its_default_passes_it() -> None:
    """A row types all its keys or none; a default the row gives is one the loader would accept if written."""
    for row in fields.FIELDS:
        assert len(row.types) in (0, len(row.keys)), row.paths
    for path, kind in TYPED:
        if isinstance(kind, fields.Number) and kind.default is not None:
            assert kind.low <= kind.default <= kind.high, path
        elif isinstance(kind, fields.OneOf) and kind.default is not None:
            assert kind.default in kind.choices, path
        elif isinstance(kind, fields.Text) and kind.default is not None and kind.check:
            assert kind.check(kind.default) is None, path


def _outside(kind: fields.Type) -> tuple[object, str] | None:
    """A value outside a type, and the problem the loader names; None for text of no check (a path)."""
    if isinstance(kind, fields.Number):
        return kind.high + 1, f"must be between {kind.low} and {kind.high}, got {kind.high + 1}"
    if isinstance(kind, fields.OneOf):
        return "nope", f"'nope' is not one of {', '.join(kind.choices)}"
    if isinstance(kind, fields.Flag):
        return "yes", "must be true or false, got a string"
    if kind.check is None:
        return None
    problem = kind.check("x y!")
    assert problem, f"{kind.check.__name__} accepts 'x y!'"
    return "x y!", problem


CHECKED = [(path, kind) for path, kind in TYPED if _outside(kind)]  # text of no check is a path the build opens


@pytest.mark.parametrize(("path", "kind"), CHECKED, ids=[path for path, _ in CHECKED])
def test_the_loader_reads_each_typed_field_as_its_row_says(path: str, kind: fields.Type) -> None:
    """Bounds, words and checks live in the row: a value outside them is refused once, with the row's words."""
    outside = _outside(kind)
    assert outside is not None
    value, problem = outside
    data = copy.deepcopy(FULL)
    put(data, _concrete(path), value)
    with pytest.raises(SpecError) as refused:
        load_spec(yaml.safe_dump(data), base_dir=ROOT)
    mine = [m for m in refused.value.messages if m.startswith(_concrete(path) + ":")]
    assert mine == [f"{_concrete(path)}: {problem}"], refused.value.messages


@pytest.mark.parametrize("section", ["", "cluster", "network.ntp", "nodes[]", "clients[].access[]", "pki.ca"])
def test_a_key_no_row_has_is_unknown(section: str) -> None:
    required, optional = fields.keys(section)
    assert "colour" not in required + optional
    data = copy.deepcopy(FULL)
    where = _concrete(section)
    target = data
    for part in [p for p in where.split(".") if p]:
        target = target[int(part)] if isinstance(target, list) else target.setdefault(part, {})
    target["colour"] = "blue"
    with pytest.raises(SpecError) as refused:
        load_spec(yaml.safe_dump(data), base_dir=ROOT)
    assert any(m.startswith(f"{where + '.' if where else ''}colour: unknown key") for m in refused.value.messages)


def _digests(data: dict[str, Any]) -> dict[str, str]:
    return dict(load_spec(yaml.safe_dump(data), base_dir=ROOT)[0].field_digests)


def _changes(before: dict[str, Any], after: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(c.path, c.what, c.reach.value) for c in fields.changes(_digests(before), _digests(after))]


def test_changes_follow_a_list_item_by_its_name_and_ignore_what_loads_the_same() -> None:
    after = copy.deepcopy(FULL)
    after["nodes"][1]["ip"] = "10.8.0.9"
    after["network"]["ntp"]["wait_seconds"] = 90
    del after["admin"]["sudo"]  # its default, true: loads the same
    after["nodes"][0]["mac"] = "52:54:00:00:00:0A".replace("0A", "01").upper()  # the same MAC
    after["nodes"][0]["fqdn"] = "etcd01.example.com"  # its default
    after["etcd"]["plaintext_localhost"] = False
    after["clients"][1]["access"] = [{"prefix": "/app/", "mode": "readwrite"}]
    assert _changes(FULL, after) == [("clients.reader.access", "changed", "first node"),
                                     ("network.ntp.wait_seconds", "changed", "reload"),
                                     ("nodes.etcd02.ip", "changed", "step")]
    assert _changes(FULL, FULL) == []


def test_an_item_added_or_removed_is_one_change_and_the_node_order_is_one() -> None:
    grown = copy.deepcopy(FULL)
    grown["nodes"].append({"name": "etcd04", "ip": "10.8.0.4", "mac": "52:54:00:00:00:04", "join": True})
    grown["clients"].append({"name": "kube"})
    assert _changes(FULL, grown) == [("clients.kube", "added", "first node"), ("nodes.etcd04", "added", "step")]
    assert _changes(grown, FULL) == [("clients.kube", "removed", "reload"), ("nodes.etcd04", "removed", "step")]
    turned = copy.deepcopy(FULL)
    turned["nodes"].reverse()
    assert _changes(FULL, turned) == [("nodes", "reordered", "restart")]
    empty = copy.deepcopy(FULL)
    empty["clients"][0]["access"] = []  # flannel without its default grant
    assert _changes(FULL, empty) == [("clients.flannel.access", "changed", "first node")]


def test_a_flag_cleared_after_its_step_has_the_reach_of_its_end() -> None:
    joined = copy.deepcopy(FULL)
    joined["nodes"].append({"name": "etcd04", "ip": "10.8.0.4", "mac": "52:54:00:00:00:04", "join": True})
    settled = copy.deepcopy(joined)
    del settled["nodes"][3]["join"]
    assert _changes(joined, settled) == [("nodes.etcd04.join", "cleared", "restart")]
    assert _changes(settled, joined) == [("nodes.etcd04.join", "changed", "refused")]


def test_a_manifest_field_of_no_row_is_left_out_and_a_malformed_one_refused() -> None:
    assert fields.changes({"cluster.name": "0" * 16, "etcd.colour": "0" * 16}, {"cluster.name": "0" * 16}) == []
    base = b'{"format": 2, "files": {}, "fields": %s}'
    good = b'{"cluster.name": "0123456789abcdef", "nodes.etcd01.join": "false"}'
    assert parse_manifest(base % good).fields == {"cluster.name": "0123456789abcdef", "nodes.etcd01.join": "false"}
    for bad in (b'{"cluster.name": "xyz"}', b'{"cluster.name": "0123456789abcdef", "etcd\\ntoken": "true"}',
                b'["cluster.name"]', b'{"cluster.name": "0123456789ABCDEF"}',
                b'{"cluster.name": "0123456789abcdef", "clients.x.access.y.mode": "true"}'):
        with pytest.raises(OutputError, match="fields: must map"):
            parse_manifest(base % bad)
    with pytest.raises(OutputError, match=r"fields: has no cluster\.name"):
        parse_manifest(base % b"{}")


def test_every_row_has_a_reach_the_docs_explain() -> None:
    assert set(fields.REACH_MEANING) == set(fields.Reach)
    paths = [p for row in fields.FIELDS for p in row.paths]
    assert len(paths) == len(set(paths)), "a field is in two rows"
