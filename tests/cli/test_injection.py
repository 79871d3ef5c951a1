"""Hostile input: no spec value escapes the file it lands in, and every odd input is one `error:` line."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers.cli import (
    assert_refused,
    build,
    run_subprocess,
    set_spec,
)
from tests.helpers.parsers import cloud_init_available, cloud_init_load, systemd_available, systemd_env
from tests.helpers.specs import ROOT, fake_bundle, spec_yaml

LINE_BREAKS = ["\n", "\r", "\r\n", "\x85", "\u2028", "\u2029", "\x0b", "\x0c"]


def yaml_dq(value: str) -> str:
    """A YAML double-quoted scalar holding `value` exactly, for writing hostile specs."""
    return json.dumps(value)


@pytest.mark.parametrize("brk", LINE_BREAKS, ids=[repr(b) for b in LINE_BREAKS])
def test_token_with_a_line_break_is_refused(workdir: Path, brk: str) -> None:
    """A token cannot break out of user-data's block or add lines to options.env."""
    token = f"t{brk}ETCD_CLIENT_CERT_AUTH=false"
    set_spec(workdir, "  heartbeat_interval: 100", f"  token: {yaml_dq(token)}\n  heartbeat_interval: 100")
    assert_refused(workdir, "etcd.token")


@pytest.mark.parametrize("token", ["tok\\", "a b", "a#b", "a'b", 'a"b', "a$b", "-lead"])
def test_token_outside_the_safe_set_is_refused(workdir: Path, token: str) -> None:
    """A trailing backslash would make systemd join the next line; quotes and $ mean something to sh."""
    set_spec(workdir, "  heartbeat_interval: 100", f"  token: {yaml_dq(token)}\n  heartbeat_interval: 100")
    assert_refused(workdir, "etcd.token")


@pytest.mark.parametrize("url", ["https://x.example/`id`", "https://x.example/a b", "https://x.example/a\nb",
                                 "https://x.example/a\\b", "https://x.example/a\u2028b"])
def test_url_with_shell_syntax_is_refused(workdir: Path, url: str) -> None:
    """etcd.url reaches a root shell script: anything sh would read as syntax is refused."""
    set_spec(workdir, "bundle: etcd.tar.gz", f"url: {yaml_dq(url)}\n  sha256: '{'a' * 64}'")
    assert_refused(workdir, "etcd.url")


@pytest.mark.parametrize("url", [
    "https://objects.example/etcd.tgz?X-Amz-Signature=ab%2Fc&X-Amz-Expires=600",
    "https://x.example/e.tgz;touch$IFS/tmp/pwned;", "https://x.example/$(touch$IFS/tmp/pwned)",
    "https://x.example/x&touch$IFS/tmp/pwned&", "https://x.example/a'$(touch$IFS/tmp/pwned)'",
], ids=["presigned", "semicolon", "command-substitution", "ampersand", "single-quote"])
def test_url_reaches_sh_unchanged(workdir: Path, url: str) -> None:
    """Characters a URL may hold (& ; $ ( )) are quoted: sh assigns exactly the URL and runs nothing."""
    set_spec(workdir, "bundle: etcd.tar.gz", f"url: {yaml_dq(url)}\n  sha256: '{'a' * 64}'")
    assert build(workdir)[0] == 0
    user_data = yaml.safe_load((workdir / "out" / "demo" / "etcd01" / "user-data").read_text())
    script = next(f["content"] for f in user_data["write_files"] if f["path"] == "/usr/local/sbin/etcd-seed-install")
    line = next(line for line in script.splitlines() if line.startswith("url="))
    marker = Path("/tmp/pwned")
    marker.unlink(missing_ok=True)
    done = subprocess.run(["sh", "-euc", f'{line}\nprintf %s "$url"'], capture_output=True, text=True, check=True)
    assert done.stdout == url and not marker.exists()
    assert subprocess.run(["sh", "-n", "-c", script], check=False).returncode == 0


@pytest.mark.parametrize(("old", "new", "field"), [
    ("name: etcd02,", 'name: "etcd02\\n",', "nodes.1.name"),
    ('"52:54:00:00:00:02"', '"52:54:00:00:00:02\\n"', "nodes.1.mac"),
    ("domain: example.com", 'domain: "example.com\\n"', "cluster.domain"),
    ("name: demo", 'name: "demo\\n"', "cluster.name"),
    ('version: "3.5.1"', 'version: "3.5.1\\n"', "etcd.version"),
    ("name: etcd02,", 'name: etcd02, fqdn: "etcd02.example.com\\n",', "nodes.1.fqdn"),
])
def test_trailing_newline_is_refused(workdir: Path, old: str, new: str, field: str) -> None:
    """A `$`-anchored pattern accepts a trailing newline; every pattern must match the whole value."""
    set_spec(workdir, old, new)
    assert_refused(workdir, field)


@pytest.mark.parametrize("name", ["null", "yes", "on", "123", "0x1f", "0b101", "017", "true"])
def test_yaml_lookalike_names_stay_strings(workdir: Path, name: str) -> None:
    """A node name or search domain that YAML would read as null, a boolean or a number is quoted."""
    set_spec(workdir, "name: etcd02,", f"name: {yaml_dq(name)},")
    set_spec(workdir, "dns: [192.168.0.254]}", f"dns: [192.168.0.254], search: [{yaml_dq(name)}]}}")
    code, _, err = build(workdir)
    assert code == 0, err
    node = workdir / "out" / "demo" / name
    user_data = yaml.safe_load((node / "user-data").read_text())
    meta = yaml.safe_load((node / "meta-data").read_text())
    network = yaml.safe_load((node / "network-config").read_text())
    assert user_data["hostname"] == name and meta["local-hostname"] == name
    assert network["ethernets"]["primary"]["nameservers"]["search"] == [name]
    if cloud_init_available() is None:
        loaded = cloud_init_load([(node / "user-data").read_text(), (node / "meta-data").read_text()])
        assert loaded[0]["hostname"] == name and loaded[1]["local-hostname"] == name  # type: ignore[index]


def test_alias_bomb_is_refused_at_once(workdir: Path) -> None:
    """A few hundred bytes of nested aliases are refused, not expanded into gigabytes."""
    levels = zip("abcdefgh", "bcdefghi", strict=True)
    bomb = 'a: &a ["x","x","x","x","x","x","x","x","x"]\n' + "".join(
        f"{c}: &{c} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]\n" for p, c in levels)
    set_spec(workdir, 'version: "3.5.1"', "version: *i")
    (workdir / "cluster.yaml").write_text(bomb + (workdir / "cluster.yaml").read_text())
    start = time.monotonic()
    done = run_subprocess(workdir, "build", "--spec", "cluster.yaml", "--out", "out")
    print(f"alias bomb refused in {time.monotonic() - start:.2f} s")
    assert done.returncode == 1 and "aliases (*name) are not allowed" in done.stderr
    assert not (workdir / "out").exists()


@pytest.mark.parametrize("target", ["spec", "bundle", "ca", "ca_next"])
@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
def test_special_files_as_inputs_are_refused(workdir: Path, target: str, kind: str) -> None:
    """A FIFO or /dev/zero as the spec, the bundle or the CA file is refused at once, not read forever."""
    special = workdir / "special"
    if kind == "fifo":
        os.mkfifo(special)
    else:
        special.symlink_to("/dev/zero")
    spec = "cluster.yaml"
    if target == "spec":
        spec = "special"
    elif target == "bundle":
        set_spec(workdir, "bundle: etcd.tar.gz", "bundle: special")
    else:
        set_spec(workdir, "validity_days: 365}", f"validity_days: 365, {target}: {{cert: special, key: special}}}}")
    done = run_subprocess(workdir, "build", "--spec", spec, "--out", "out", timeout=20)
    assert done.returncode == 1 and "is not a regular file" in done.stderr, done.stderr
    if target.startswith("ca"):
        assert f"error: pki.{target}.cert: " in done.stderr, done.stderr
    assert not (workdir / "out").exists()


@pytest.mark.parametrize(("edit", "field"), [
    (lambda t: t.replace("name: demo", "name: " + "d" * 60), "cluster.name"),
    (lambda t: t.replace("cluster: {", "cluster: {[1, 2]: x, "), "cluster.yaml"),
    (lambda t: "x: " + "[" * 200 + "]" * 200 + "\n" + t, "cluster.yaml"),
], ids=["long-cluster-name", "unhashable-key", "deep-nesting"])
def test_odd_specs_get_an_error_line(workdir: Path, edit: object, field: str) -> None:
    """Each of these ended in 'internal error' before; now each is an error: line naming where."""
    spec = workdir / "cluster.yaml"
    spec.write_text(edit(spec.read_text()))  # type: ignore[operator]
    done = run_subprocess(workdir, "build", "--spec", "cluster.yaml", "--out", "out")
    assert done.returncode == 1 and done.stderr.startswith(f"error: {field}"), done.stderr
    assert "internal error" not in done.stderr and not (workdir / "out").exists()


def test_huge_source_date_epoch_writes_nothing(workdir: Path) -> None:
    """An epoch no ISO can hold is refused before a single file is written."""
    done = run_subprocess(workdir, "build", "--spec", "cluster.yaml", "--out", "out",
                          env={"SOURCE_DATE_EPOCH": "99999999999"})
    assert done.returncode == 1 and "SOURCE_DATE_EPOCH" in done.stderr and "internal error" not in done.stderr
    assert not (workdir / "out").exists()


@pytest.mark.parametrize(("old", "new", "expected"), [
    ("ip: 192.168.0.1,", "ip: 127.0.0.1,", "nodes.0.ip: 127.0.0.1 is a loopback address"),
    ("ip: 192.168.0.1,", "ip: 224.0.0.5,", "nodes.0.ip: 224.0.0.5 is a multicast address"),
    ("ip: 192.168.0.1,", "ip: 169.254.0.1,", "nodes.0.ip: 169.254.0.1 is a link-local address"),
    ("ip: 192.168.0.1,", "ip: 240.0.0.1,", "nodes.0.ip: 240.0.0.1 is a reserved address"),
    ('"52:54:00:00:00:02"', '"00:00:00:00:00:00"', "nodes.1.mac: '00:00:00:00:00:00' is the null MAC"),
    ("name: etcd02,", "name: etcd02, fqdn: etcd01.example.com.,", "nodes.1.fqdn: 'etcd01.example.com' is already used"),
    ("network: 10.2.0.0/16", "network: 192.168.0.0/16", "flannel.network: 192.168.0.0/16 overlaps the node network"),
], ids=["loopback", "multicast", "link-local", "reserved", "null-mac", "fqdn-trailing-dot", "flannel-overlap"])
def test_addresses_that_cannot_work_are_refused(workdir: Path, old: str, new: str, expected: str) -> None:
    set_spec(workdir, old, new)
    err = assert_refused(workdir, expected.split(":")[0])
    assert f"error: {expected}" in err, err


@pytest.mark.parametrize("user", ["root", "daemon", "etcd", "nobody", "sshd"])
def test_admin_name_cannot_be_a_system_user(workdir: Path, user: str) -> None:
    (workdir / "cluster.yaml").write_text((workdir / "cluster.yaml").read_text() + f"admin: {{name: {user}}}\n")
    assert_refused(workdir, "admin.name")


def test_etcdctl_env_template_errors_are_wrapped() -> None:
    """A broken etcdctl.env.j2 is reported as a template error, like every other template."""
    import jinja2

    from generator.errors import TemplateError
    from generator.loader import load_spec
    from generator.render import make_environment, render_etcdctl_env

    env = make_environment()
    env.loader = jinja2.DictLoader({"etcdctl.env.j2": "X={{ spec.nothing_here }}\n"})
    spec, _ = load_spec(spec_yaml(), base_dir=ROOT)
    with pytest.raises(TemplateError, match=r"templates/etcdctl\.env\.j2: .*nothing_here"):
        render_etcdctl_env(env, spec)


@pytest.mark.skipif(systemd_available() is not None, reason=str(systemd_available()))
def test_options_env_reads_the_same_in_systemd_and_sh(workdir: Path) -> None:
    """systemd's own parser and sh read every options.env into exactly the settings the build meant."""
    from generator import node as node_facts
    from generator.decisions import decide
    from generator.loader import load_spec
    from tests.helpers.parsers import sh_env

    assert build(workdir)[0] == 0
    spec, _ = load_spec((workdir / "cluster.yaml").read_text(), base_dir=workdir)
    for node in spec.nodes:
        path = workdir / "out" / "demo" / node.name / "options.env"
        assert systemd_env(path) == node_facts.options(spec, decide(spec), node)
        assert sh_env(path) == node_facts.options(spec, decide(spec), node)


def test_fake_bundle_fixture_is_a_release_layout() -> None:
    """The helper used above carries etcd and etcdctl, so a refusal above is the input's, not the fixture's."""
    from generator.etcd import Version, check_release_tarball

    assert check_release_tarball(fake_bundle(), Version(3, 5, 1)) is None
