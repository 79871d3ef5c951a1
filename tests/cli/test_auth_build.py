"""etcd's authentication as the build writes it: on by default for a new cluster, left to the cluster for one
built before it was managed until the spec sets auth.enabled, the first node's member.json carrying every user and
grant, `plan` listing them, and every bad `access` refused with an error naming the field."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.cli import assert_refused, build, run, set_spec, verify

CLIENTS = """\
clients:
  - {name: flannel, use: flannel}
  - {name: kube-apiserver, use: kube-apiserver, cn: kube-apiserver-etcd-client}
  - {name: reader, access: [{prefix: /app/}, {key: motd, mode: readwrite}]}
etcd:
"""


def _member_json(workdir: Path, node: str = "etcd01") -> dict[str, Any]:
    user_data = (workdir / f"out/demo/{node}/user-data.redacted").read_text()
    block = user_data.split("path: /var/lib/etcd-seed/seed/member.json", 1)[1].split("content: |\n", 1)[1]
    text = "\n".join(line[6:] for line in block.splitlines() if line.startswith("      ") or not line)
    config: dict[str, Any] = json.JSONDecoder().raw_decode(text.strip())[0]
    return config


def _built_before_auth(workdir: Path) -> Path:
    """A built tree whose manifest.json has no auth entry, as a build before auth was managed wrote it."""
    assert build(workdir)[0] == 0
    manifest = workdir / "out/demo/manifest.json"
    document = json.loads(manifest.read_text())
    del document["auth"]
    manifest.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    return manifest


def _auth(workdir: Path, node: str = "etcd01") -> dict[str, Any] | None:
    return _member_json(workdir, node).get("auth")


def test_new_cluster_gets_a_user_per_cn_and_a_role_per_consumer(workdir: Path) -> None:
    set_spec(workdir, "etcd:\n", CLIENTS)
    code, out, err = build(workdir)
    assert code == 0, err
    assert json.loads((workdir / "out/demo/manifest.json").read_text())["auth"] == {"enabled": True}
    assert _auth(workdir) == {
        "enabled": True,
        "users": {"etcd01": ["root"], "etcd02": ["root"], "etcd03": ["root"], "flannel": ["flannel"],
                  "kube-apiserver-etcd-client": ["kube-apiserver"], "reader": ["reader"], "root": ["root"]},
        "roles": {"flannel": [{"key": "/coreos.com/network/", "range_end": "/coreos.com/network0",
                               "mode": "readwrite"}],
                  "kube-apiserver": [{"key": "/registry/", "range_end": "/registry0", "mode": "readwrite"},
                                     {"key": "compact_rev_key", "range_end": "", "mode": "readwrite"}],
                  "reader": [{"key": "/app/", "range_end": "/app0", "mode": "read"},
                             {"key": "motd", "range_end": "", "mode": "readwrite"}]}}
    assert _auth(workdir, "etcd02") is None  # only the first node applies them
    code, out, _ = run("plan", "--spec", str(workdir / "cluster.yaml"), "--out", str(workdir / "out"))
    assert code == 0
    assert "auth: on (etcd01 applies these etcd users and roles)\n" in out
    assert "auth: user kube-apiserver-etcd-client: readwrite /registry/*; readwrite compact_rev_key\n" in out
    assert "auth: user reader: read /app/*; readwrite motd\n" in out
    assert "auth: user etcd02: root (every key, membership, snapshots, defragmentation)\n" in out
    assert verify(workdir)[0] == 0


def test_cluster_built_before_auth_is_left_alone_until_the_spec_sets_it(workdir: Path) -> None:
    # Its users, roles and auth state were made by hand: a seed that applied the spec's would delete them.
    manifest = _built_before_auth(workdir)
    for _ in range(2):
        code, out, err = build(workdir)
        assert code == 0, err
        assert "auth: left as it is on the cluster, which was built before authentication was managed" in out
        assert _auth(workdir) is None
        user_data = (workdir / "out/demo/etcd01/user-data.redacted").read_text()
        assert "path: /var/lib/etcd-seed/seed/etcd-seed-auth.service" not in user_data
        steps = [line for line in user_data.splitlines() if "systemctl start" in line or "enable=" in line]
        assert not [line for line in steps if "etcd-seed-auth" in line]
        assert "auth" not in json.loads(manifest.read_text())  # still unmanaged for the next build
        assert verify(workdir)[0] == 0
    code, out, _ = run("plan", "--spec", str(workdir / "cluster.yaml"), "--out", str(workdir / "out"))
    assert code == 0 and out.count("auth: left as it is on the cluster") == 1 and "auth: user" not in out, out
    set_spec(workdir, "etcd:\n", "auth: {enabled: true}\netcd:\n")
    code, out, err = build(workdir)
    assert code == 0, err
    assert "auth: now managed: once etcd01 runs its new seed, it deletes the etcd users and roles the spec does not " \
           "name (those made by hand too), applies the spec's, and turns auth on" in out
    assert _auth(workdir)["enabled"] is True  # type: ignore[index]
    assert "roll the changed seeds one node at a time" in out and "(1. etcd01)" in out
    code, out, err = build(workdir)
    assert code == 0 and "auth:" not in out, out


def test_node_joining_a_cluster_whose_auth_is_left_alone_is_told_to_have_its_user_made_by_hand(
        workdir: Path) -> None:
    # No seed adds users to such a cluster: pointing at the first node's seed would leave the joiner waiting.
    _built_before_auth(workdir)
    set_spec(workdir, "etcd:\n", '  - {name: etcd04, ip: 192.168.0.4, mac: "52:54:00:00:00:04", join: true}\netcd:\n')
    code, out, err = build(workdir)
    assert code == 0, err
    assert "etcd04 joins the running cluster by itself: if auth is on in the cluster (the build leaves it as the " \
           "cluster has it), create the etcd user etcd04 with the root role by hand first" in out, out
    config = _member_json(workdir, "etcd04")
    assert config["mode"] == "join" and "auth_by" not in config, config


def test_cluster_built_before_auth_can_be_turned_off_by_the_spec(workdir: Path) -> None:
    manifest = _built_before_auth(workdir)
    set_spec(workdir, "etcd:\n", "auth: {enabled: false}\netcd:\n")
    code, out, err = build(workdir)
    assert code == 0, err
    assert "and turns auth off" in out
    assert _auth(workdir)["enabled"] is False  # type: ignore[index]
    assert json.loads(manifest.read_text())["auth"] == {"enabled": False}


@pytest.mark.parametrize(("access", "field", "expected"), [
    ("[{prefix: /a/}, {prefix: /a/b/}]", "clients.0.access.1.prefix", "overlaps clients.0.access.0"),
    ("[{prefix: /a/}, {key: /a/x}]", "clients.0.access.1.key", "overlaps clients.0.access.0"),
    ("[{key: k}, {key: k, mode: write}]", "clients.0.access.1.key", "overlaps clients.0.access.0"),
    ("[{prefix: ''}]", "clients.0.access.0.prefix", "is not 1-1024 printable ASCII characters"),
    ("[{key: 'a b'}]", "clients.0.access.0.key", "is not 1-1024 printable ASCII characters"),
    ("[{key: \"caf\\xe9\"}]", "clients.0.access.0.key", "is not 1-1024 printable ASCII characters"),
    ("[{key: \"a\\nb\"}]", "clients.0.access.0.key", "is not 1-1024 printable ASCII characters"),
    ("[{key: 7}]", "clients.0.access.0.key", "is not 1-1024 printable ASCII characters"),
    ("[{key: k, prefix: p}]", "clients.0.access.0", "needs exactly one of key"),
    ("[{mode: read}]", "clients.0.access.0", "needs exactly one of key"),
    ("[{key: k, mode: admin}]", "clients.0.access.0.mode", "'admin' is not one of read, write, readwrite"),
    ("[{key: k, range: all}]", "clients.0.access.0.range", "unknown key"),
    ("/app/", "clients.0.access", "must be a list"),
], ids=lambda v: str(v)[:30])
def test_bad_access_is_refused(workdir: Path, access: str, field: str, expected: str) -> None:
    set_spec(workdir, "etcd:\n", f"clients:\n  - {{name: reader, access: {access}}}\netcd:\n")
    assert expected in assert_refused(workdir, field)


def test_client_named_root_or_sharing_a_cn_is_refused(workdir: Path) -> None:
    set_spec(workdir, "etcd:\n", "clients:\n  - {name: root}\netcd:\n")
    assert "'root' is etcd's root role" in assert_refused(workdir, "clients.0.name")
    set_spec(workdir, "  - {name: root}\n", "  - {name: a, cn: shared}\n  - {name: b, cn: shared}\n")
    assert "'shared' is also clients.0's CN" in assert_refused(workdir, "clients.1.cn")


@pytest.mark.parametrize("value", ["'yes'", "1", "{on: true}"])
def test_bad_auth_is_refused(workdir: Path, value: str) -> None:
    set_spec(workdir, "etcd:\n", f"auth: {{enabled: {value}}}\netcd:\n")
    assert "must be true or false" in assert_refused(workdir, "auth.enabled")


def test_a_new_first_node_takes_the_auth_step_over(workdir: Path) -> None:
    """The spec's first node applies etcd's users and roles; when another node comes first, its seed gets the step and
    the old first node's seed removes the unit, so that no node runs it with a member.json that has no auth."""
    assert build(workdir)[0] == 0
    spec = (workdir / "cluster.yaml").read_text()
    first = '  - {name: etcd01, ip: 192.168.0.1, mac: "52:54:00:00:00:01"}\n'
    assert first in spec
    (workdir / "cluster.yaml").write_text(spec.replace(first, "").replace(
        '  - {name: etcd03, ip: 192.168.0.3, mac: "52:54:00:00:00:03"}\n',
        '  - {name: etcd03, ip: 192.168.0.3, mac: "52:54:00:00:00:03"}\n' + first))
    code, _, err = build(workdir)
    assert code == 0, err
    assert _auth(workdir, "etcd02") is not None and _auth(workdir, "etcd01") is None
    install = (workdir / "out/demo/etcd01/user-data.redacted").read_text()
    assert "systemctl disable --now etcd-seed-auth.service" in install and "auth step off on this node" in install
    assert "etcd-seed-auth.service" in (workdir / "out/demo/etcd02/user-data.redacted").read_text()


def test_verify_finds_a_grant_that_the_spec_does_not_give(workdir: Path) -> None:
    """A seed whose first node would grant flannel /registry/ (the manifest fixed up to match) fails verify: the
    grants are rendered from the spec and compared byte for byte."""
    set_spec(workdir, "etcd:\n", CLIENTS)
    assert build(workdir)[0] == 0
    root = workdir / "out/demo"
    for name in ("user-data", "user-data.redacted"):
        path = root / "etcd01" / name
        text = path.read_text()
        assert text.count('"key": "/coreos.com/network/"') == 1
        path.write_text(text.replace('"key": "/coreos.com/network/"', '"key": "/registry/"').replace(
            '"range_end": "/coreos.com/network0"', '"range_end": "/registry0"'))
        document = json.loads((root / "manifest.json").read_text())
        data = path.read_bytes()
        document["files"][f"etcd01/{name}"]["sha256"] = hashlib.sha256(data).hexdigest()
        document["files"][f"etcd01/{name}"]["size"] = len(data)
        (root / "manifest.json").write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    code, _, err = verify(workdir)
    assert code == 1 and "error: etcd01/user-data.redacted:" in err, err
