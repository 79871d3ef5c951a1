"""The field table: the docs' table is made from it, the loader takes its keys from it, every field's type is
checked, and the digests that `plan` compares follow a list item by its name."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from generator import fields
from generator.errors import OutputError, SpecError
from generator.manifest import parse_manifest
from generator.spec import load_spec
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


def test_full_spec_loads_and_sets_every_field() -> None:
    load_spec(yaml.safe_dump(FULL), base_dir=ROOT)
    table = {t for _, t, _ in fields.values(FULL)}
    assert table <= {p for row in fields.FIELDS for p in row.paths}
    assert {"nodes[].ip", "clients[].access[].mode", "network.ntp.servers", "network.dns"} <= table


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


def test_digests_follow_a_list_item_by_its_name() -> None:
    before = fields.digests(FULL)
    moved = copy.deepcopy(FULL)
    moved["nodes"] = [moved["nodes"][1], moved["nodes"][0], moved["nodes"][2]]
    moved["nodes"][0]["ip"] = "10.8.0.9"
    moved["network"]["ntp"]["wait_seconds"] = 90
    del moved["admin"]["sudo"]
    assert fields.changes(before, fields.digests(moved)) == [
        ("admin.sudo", fields.Reach.CLOUD_INIT), ("network.ntp.wait_seconds", fields.Reach.RELOAD),
        ("nodes.etcd02.ip", fields.Reach.STEP)]
    assert fields.table_path("clients.reader.access.0.mode") == "clients[].access[].mode"
    assert fields.changes(before, before) == []


def test_a_manifest_field_of_no_row_is_left_out_and_a_malformed_one_refused(tmp_path: Path) -> None:
    assert fields.changes({"etcd.colour": "0" * 16}, {}) == []
    base = b'{"format": 2, "files": {}, "fields": %s}'
    assert parse_manifest(base % b'{"etcd.token": "0123456789abcdef"}').fields == {"etcd.token": "0123456789abcdef"}
    for bad in (b'{"etcd.token": "xyz"}', b'{"etcd\\ntoken": "0123456789abcdef"}', b'["etcd.token"]'):
        with pytest.raises(OutputError, match="fields: must map"):
            parse_manifest(base % bad)


def test_every_row_has_a_reach_the_docs_explain() -> None:
    assert set(fields.REACH_MEANING) == set(fields.Reach)
    paths = [p for row in fields.FIELDS for p in row.paths]
    assert len(paths) == len(set(paths)), "a field is in two rows"
