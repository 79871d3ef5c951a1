"""Rendering: golden files for every seed file, and the structure cloud-init relies on."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jinja2
import pytest
import yaml

from generator.decisions import decide
from generator.errors import TemplateError
from generator.layout import NODE_FILES, SEED_ISO
from generator.render import (
    PATHS,
    SeedFiles,
    make_environment,
    redaction_marker,
    render_node,
)
from generator.spec import Spec
from tests.helpers.specs import fake_pem, parse, spec_yaml

GOLDEN = Path(__file__).parent.parent / "golden"
SHA = "0" * 64
ADMIN = """admin:
  name: ops
  ssh_authorized_keys: ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForGoldenFiles ops@example"]
"""


def render_all(spec: Spec) -> dict[str, SeedFiles]:
    env = make_environment()
    return {n.name: render_node(env, spec, decide(spec), n, fake_pem(n.name), SHA) for n in spec.nodes}


@pytest.fixture(scope="module")
def example() -> Spec:
    return parse(spec_yaml(ntp="{servers: [192.168.0.254], pools: [pool.example.com]}") + ADMIN)


@pytest.fixture(scope="module")
def rendered(example: Spec) -> dict[str, SeedFiles]:
    return render_all(example)


@pytest.fixture(scope="module")
def joining() -> SeedFiles:
    """etcd03's seed when it joins a running cluster: it alone gets the promote unit and module."""
    text = spec_yaml().replace("{name: etcd03, ", "{name: etcd03, join: true, ")
    return render_all(parse(text))["etcd03"]


FILES = tuple(f.name for f in NODE_FILES if f.name != SEED_ISO)


@pytest.mark.parametrize("node", ["etcd01", "etcd02", "etcd03"])
def test_golden(rendered: dict[str, SeedFiles], node: str) -> None:
    """Each rendered file equals its golden copy; UPDATE_GOLDEN=1 rewrites them for review."""
    texts = rendered[node].texts
    assert set(texts) == set(FILES)
    for name, text in texts.items():
        path = GOLDEN / node / name
        if os.environ.get("UPDATE_GOLDEN"):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        assert path.read_text() == text, f"{path} differs; rerun with UPDATE_GOLDEN=1 and review the diff"


def _files_by_path(user_data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["path"]: f for f in user_data["write_files"]}


def test_user_data_is_cloud_config(rendered: dict[str, SeedFiles]) -> None:
    """user-data starts with #cloud-config and parses as a YAML mapping."""
    for files in rendered.values():
        assert files.texts["user-data"].startswith("#cloud-config\n")
        assert isinstance(yaml.safe_load(files.texts["user-data"]), dict)
        assert isinstance(yaml.safe_load(files.texts["network-config"]), dict)
        assert isinstance(yaml.safe_load(files.texts["meta-data"]), dict)


def test_seed_files_are_staged_root_only(rendered: dict[str, SeedFiles]) -> None:
    """cloud-init writes every file of the seed to the staging directory, root-only; the install step checks each
    against its sha256 and puts it in place. Only the install step itself is written where it runs."""
    data = yaml.safe_load(rendered["etcd01"].texts["user-data"])
    files = _files_by_path(data)
    staged = {p for p in files if p.startswith(f"{PATHS.staged}/")}
    modules = ("__init__", "transport", "cli", "prepare", "report", "clock", "defrag", "auth")
    assert staged == {f"{PATHS.staged}/{n}" for n in ("ca.crt", "etcd.crt", "etcd.key", "options.env", "etcd.service",
                                                      "etcd-flannel-config.service", "member.json", "crl.der",
                                                      "etcd-seed-auth.service", "etcd-backup.service",
                                                      "etcd-backup.timer", "etcd-seed-boot.service",
                                                      "etcd-seed-clock.service", "etcd-seed-report.service",
                                                      "etcd-defrag.service", "etcd-defrag.timer",
                                                      "etcd-seed-member", "etcd-seed-backup", "etcd-flannel-config",
                                                      *(f"etcd_seed_node.{m}.py" for m in modules))}
    assert all(files[p]["owner"] == "root:root" and files[p]["permissions"] == "0600" for p in staged)
    assert set(files) - staged == {PATHS.install_bin}
    assert files[f"{PATHS.staged}/etcd.key"]["content"] == fake_pem("etcd01").key_pem.decode()
    assert files[f"{PATHS.staged}/etcd.crt"]["content"] == fake_pem("etcd01").chain_pem.decode()
    # The CRL is DER, not text: cloud-init decodes it from base64 and writes its bytes as they are.
    crl = files[f"{PATHS.staged}/crl.der"]
    assert crl["encoding"] == "b64" and base64.b64decode(crl["content"]) == fake_pem("etcd01").crl_der


def test_install_step_carries_the_sha256_of_every_staged_file(rendered: dict[str, SeedFiles]) -> None:
    """The install script lists the sha256 of each staged file exactly as cloud-init writes it (the key's is its
    PEM's, which the redacted copy names too), so a file cut short by a power loss is never installed."""
    for texts in (rendered["etcd01"].texts["user-data"], rendered["etcd01"].texts["user-data.redacted"]):
        files = _files_by_path(yaml.safe_load(texts))
        script = files[PATHS.install_bin]["content"]
        sums = dict(reversed(line.split("  ", 1)) for line in
                    script.split("<<'SUMS'\n", 1)[1].split("\nSUMS\n", 1)[0].splitlines())
        assert set(sums) == {p.rsplit("/", 1)[1] for p in files if p.startswith(f"{PATHS.staged}/")}
        for name, digest in sums.items():
            entry = files[f"{PATHS.staged}/{name}"]
            data = base64.b64decode(entry["content"]) if entry.get("encoding") == "b64" else entry["content"].encode()
            if b"withheld from review" not in data:
                assert hashlib.sha256(data).hexdigest() == digest, name
    assert _files_by_path(yaml.safe_load(rendered["etcd01"].texts["user-data"]))[PATHS.install_bin] == \
        _files_by_path(yaml.safe_load(rendered["etcd01"].texts["user-data.redacted"]))[PATHS.install_bin]


def test_etcd_user_has_no_login(rendered: dict[str, SeedFiles]) -> None:
    """The etcd user is a locked system user with no login shell."""
    users = {u["name"]: u for u in yaml.safe_load(rendered["etcd02"].texts["user-data"])["users"]}
    assert users["etcd"]["system"] is True
    assert users["etcd"]["shell"] == "/usr/sbin/nologin"
    assert users["etcd"]["lock_passwd"] is True
    assert users["ops"]["ssh_authorized_keys"][0].startswith("ssh-ed25519 ")


def test_unit_and_options_match_the_seed_and_cis(rendered: dict[str, SeedFiles]) -> None:
    """options.env turns on TLS with client-cert auth both ways, and auto-TLS off (CIS 2.1-2.6)."""
    env = dict(line.split("=", 1) for line in rendered["etcd01"].texts["options.env"].splitlines()
               if line and not line.startswith("#"))
    assert env["ETCD_CLIENT_CERT_AUTH"] == env["ETCD_PEER_CLIENT_CERT_AUTH"] == "true"
    assert env["ETCD_AUTO_TLS"] == env["ETCD_PEER_AUTO_TLS"] == "false"
    assert env["ETCD_LISTEN_CLIENT_URLS"] == "https://192.168.0.1:2379"
    assert env["ETCD_INITIAL_CLUSTER"] == ",".join(
        f"etcd0{i}=https://192.168.0.{i}:2380" for i in (1, 2, 3))
    assert env["ETCD_INITIAL_CLUSTER_STATE"] == "new"
    assert all(value.startswith("https://") for key, value in env.items() if key.endswith("_URLS"))
    unit = rendered["etcd01"].texts["etcd.service"]
    for line in ("Type=notify", "After=network-online.target time-sync.target etcd-seed-clock.service",
                 "Wants=network-online.target etcd-seed-clock.service",
                 "Restart=always", "LimitNOFILE=40000", "User=etcd"):
        assert f"\n{line}\n" in unit


def test_plaintext_localhost_is_opt_in() -> None:
    """The seed's http://127.0.0.1:2379 listener appears only when asked for."""
    spec = parse(spec_yaml().replace("election_timeout: 1000", "election_timeout: 1000\n  plaintext_localhost: true"))
    options = render_all(spec)["etcd01"].texts["options.env"]
    assert "ETCD_LISTEN_CLIENT_URLS=http://127.0.0.1:2379,https://192.168.0.1:2379\n" in options


def test_flannel_only_on_the_first_node(rendered: dict[str, SeedFiles]) -> None:
    """Only the first node writes flannel's config; without flannel in the spec nobody does."""
    paths = {n: set(_files_by_path(yaml.safe_load(f.texts["user-data"]))) for n, f in rendered.items()}
    assert f"{PATHS.staged}/etcd-flannel-config" in paths["etcd01"]
    assert f"{PATHS.staged}/etcd-flannel-config" not in paths["etcd02"]
    plain = parse(spec_yaml().split("flannel:")[0])
    files = set(_files_by_path(yaml.safe_load(render_all(plain)["etcd01"].texts["user-data"])))
    assert not [p for p in files if "flannel" in p]


def test_url_mode_downloads_and_checks(tmp_path: Path) -> None:
    """In url mode the node downloads the tarball and checks the spec's sha256 before installing."""
    spec = parse(spec_yaml().replace("bundle: etcd.tar.gz",
                                     f"url: https://example.com/etcd.tar.gz\n  sha256: {'a' * 64}"))
    env = make_environment()
    files = render_node(env, spec, decide(spec), spec.nodes[0], fake_pem("etcd01"), "a" * 64)
    script = _files_by_path(yaml.safe_load(files.texts["user-data"]))["/usr/local/sbin/etcd-seed-install"]["content"]
    assert "url=https://example.com/etcd.tar.gz" in script
    assert f"want={'a' * 64}" in script
    assert "blkid" not in script
    assert script.index('[ "$got" = "$want" ]') < script.index('put "$work/x/etcd"')


def test_redacted_user_data_holds_no_key(rendered: dict[str, SeedFiles]) -> None:
    """The reviewable user-data differs from the real one only where the key was."""
    files = rendered["etcd03"]
    key = fake_pem("etcd03").key_pem.decode()
    assert key.splitlines()[1] in files.texts["user-data"]
    assert key.splitlines()[1] not in files.texts["user-data.redacted"]
    assert redaction_marker(hashlib.sha256(key.encode()).hexdigest()).strip() in files.texts["user-data.redacted"]


def test_instance_id_follows_the_node_config(example: Spec, rendered: dict[str, SeedFiles]) -> None:
    """instance-ids differ per node, and change for a node only when its seed changes."""
    ids = {n: f.instance_id for n, f in rendered.items()}
    assert len(set(ids.values())) == 3
    assert all(i.startswith(f"{n}-") for n, i in ids.items())
    again = render_all(example)
    assert {n: f.instance_id for n, f in again.items()} == ids
    env = make_environment()
    changed = render_node(env, example, decide(example), example.nodes[1], fake_pem("renewed"), SHA)
    assert changed.instance_id != ids["etcd02"]


def test_undefined_variable_fails_loudly(example: Spec) -> None:
    """StrictUndefined: a template that names a missing variable is an error, not a blank."""
    env = make_environment()
    assert env.loader is not None
    env.loader = jinja2.ChoiceLoader([jinja2.DictLoader({"options.env.j2": "ETCD_NAME={{ node.nickname }}\n"}),
                                      env.loader])
    with pytest.raises(TemplateError, match=r"templates/options\.env\.j2: .*nickname"):
        render_node(env, example, decide(example), example.nodes[0], fake_pem("etcd01"), SHA)


def test_version_specific_options() -> None:
    """etcd 3.4 gets ETCD_LOGGER=zap (its default logger is deprecated); 3.5 does not need it."""
    spec34 = parse(spec_yaml().replace('version: "3.5.1"', 'version: "3.4.23"'))
    assert "\nETCD_LOGGER=zap\n" in render_all(spec34)["etcd01"].texts["options.env"]
    assert "ETCD_LOGGER" not in render_all(parse(spec_yaml()))["etcd01"].texts["options.env"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze (Debian's systemd)")
def test_units_pass_systemd_verify(rendered: dict[str, SeedFiles], joining: SeedFiles, tmp_path: Path) -> None:
    """Every unit a node gets, as `systemd-analyze verify` (systemd's own unit parser) reads it in a root that holds
    the node's files: no unknown key, no bad value. The promote step is started again after a failed run, for as
    long as it takes, and the boot step runs before etcd on every boot."""
    root = tmp_path / "root"
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    units = []
    entries = {e["path"]: e for files in (joining, rendered["etcd01"])
               for e in yaml.safe_load(files.texts["user-data"])["write_files"]}
    for entry in entries.values():
        name = entry["path"].rsplit("/", 1)[1]
        target = root / ("etc/systemd/system/" + name if name.endswith((".service", ".timer"))
                         else ("usr/local/sbin/" + name))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(entry["content"])
        if name.endswith((".service", ".timer")):
            units.append(target)
        else:
            target.chmod(0o755)
    (root / "usr/local/bin").mkdir(parents=True)
    (root / "usr/local/bin/etcd").write_text("#!/bin/sh\n")
    (root / "usr/local/bin/etcd").chmod(0o755)
    done = subprocess.run(["systemd-analyze", "verify", "--root", str(root), *map(str, units)], capture_output=True,
                          text=True, check=False)
    ours = [line for line in (done.stdout + done.stderr).splitlines() if str(root / "etc") in line
            or line.startswith(tuple(u.name for u in units))]
    assert done.returncode == 0 and not ours, done.stdout + done.stderr
    promote = (root / "etc/systemd/system/etcd-seed-promote.service").read_text()
    unit, service = promote.split("[Service]", 1)
    assert "\nStartLimitIntervalSec=0\n" in unit
    assert "\nRestart=on-failure\n" in service and "\nRestartSec=30s\n" in service
    boot = (root / "etc/systemd/system/etcd-seed-boot.service").read_text()
    assert "\nBefore=etcd.service " in boot and "\nWantedBy=etcd.service\n" in boot
    # The clock step runs the node's package, which a boot with a new seed replaces first.
    assert "etcd-seed-clock.service" in next(line for line in boot.splitlines() if line.startswith("Before="))
    assert f"\nExecStart={PATHS.install_bin} --boot\n" in boot


def _unit_values(text: str, key: str) -> list[str]:
    """Every value of `key` in a unit file, split on spaces as systemd splits dependency lists."""
    return [word for line in text.splitlines() if line.startswith(f"{key}=") for word in line[len(key) + 1:].split()]


def test_time_sync_holds_etcd_and_backups_for_a_bounded_wait(rendered: dict[str, SeedFiles]) -> None:
    """With network.ntp, cloud-init's ntp module gets the servers, and etcd and the backup start only after
    etcd-seed-clock.service, which waits at most wait_seconds (systemd gives it 30 s more before it kills it)."""
    texts = rendered["etcd01"].texts
    data = yaml.safe_load(texts["user-data"])
    assert data["ntp"] == {"enabled": True, "ntp_client": "auto", "servers": ["192.168.0.254"],
                           "pools": ["pool.example.com"]}
    files = _files_by_path(data)
    clock = files[f"{PATHS.staged}/etcd-seed-clock.service"]["content"]
    assert _unit_values(clock, "ExecStart") == [PATHS.member_bin, "clock"]
    assert {"time-sync.target", "etcd.service", "etcd-backup.service"} <= set(_unit_values(clock, "Before"))
    assert {"systemd-timesyncd.service", "chrony.service"} <= set(_unit_values(clock, "After"))
    assert _unit_values(clock, "TimeoutStartSec") == ["90s"] and _unit_values(clock, "User") == ["etcd"]
    for unit in (texts["etcd.service"], files[f"{PATHS.staged}/etcd-backup.service"]["content"]):
        assert "etcd-seed-clock.service" in _unit_values(unit, "Wants")
        assert {"etcd-seed-clock.service", "time-sync.target"} <= set(_unit_values(unit, "After"))
    member = json.loads(files[f"{PATHS.staged}/member.json"]["content"])
    assert member["clock_wait_s"] == 60
    without = render_all(parse(spec_yaml()))["etcd01"].texts
    data = yaml.safe_load(without["user-data"])
    assert "ntp" not in data
    assert json.loads(_files_by_path(data)[f"{PATHS.staged}/member.json"]["content"])["clock_wait_s"] == 0


def test_every_rename_on_the_node_is_followed_by_a_sync_of_its_directory() -> None:
    """A rename reaches the disk only with its directory: after a power cut the old name would be back. Each `mv`
    in a node script and each os.replace in the node package is followed, within three lines, by a sync."""
    templates = Path(__file__).resolve().parents[2] / "templates"
    unsynced = []
    for path in [*sorted(templates.glob("*.sh.j2")), *sorted(templates.glob("etcd_seed_node/*.py"))]:
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            code = line.split("#", 1)[0]
            if re.search(r"(^|[\s;{(])mv\s", code) or "os.replace(" in code:
                after = " ".join(lines[i + 1:i + 4])
                if not re.search(r"(^|\s)sync(\s|$)|sync \"|fsync_dir\(", after):
                    unsynced.append(f"{path.name}:{i + 1}: {line.strip()}")
    assert not unsynced, unsynced


def test_the_install_step_records_the_seed_its_meta_data_names(rendered: dict[str, SeedFiles]) -> None:
    """The instance-id cloud-init sees is the one the install step records as applied, for `status` to compare with
    the tree's meta-data: the secret and the reviewed user-data carry the same, and each node its own."""
    seen = set()
    for node, files in rendered.items():
        instance_id = yaml.safe_load(files.texts["meta-data"])["instance-id"]
        assert instance_id == files.instance_id and instance_id.startswith(f"{node}-")
        for name in ("user-data", "user-data.redacted"):
            install = _files_by_path(yaml.safe_load(files.texts[name]))[PATHS.install_bin]["content"]
            assert f"\nseed={instance_id}\n" in install, (node, name)
        seen.add(instance_id)
    assert len(seen) == 3


def test_a_changed_setting_changes_the_instance_id(example: Spec) -> None:
    """The digest is taken over the user-data with the seed line empty: everything else still counts."""
    before = render_all(example)["etcd02"].instance_id
    changed = parse(spec_yaml(ntp="{servers: [192.168.0.254], pools: [pool.example.com]}").replace(
        "heartbeat_interval: 100", "heartbeat_interval: 150") + ADMIN)
    assert render_all(changed)["etcd02"].instance_id != before


def test_no_unit_that_waits_for_quorum_holds_the_boot(rendered: dict[str, SeedFiles], joining: SeedFiles) -> None:
    """A unit multi-user.target wants is waited for by the boot, and by cloud-final.service after it on Debian 13:
    one that retries until the cluster has quorum (promote, auth, report) must count as started once its process
    runs (Type=exec). As a oneshot, systemd 254 and newer keep its start job, and the boot, waiting through every
    Restart=, so a member alone never reaches cloud-init's final stage."""
    checked = set()
    for files in [*rendered.values(), joining]:
        data = yaml.safe_load(files.texts["user-data"])
        for path, entry in _files_by_path(data).items():
            text = entry.get("content", "")
            if "ExecStart=/usr/local/sbin/etcd-seed-member " not in text or "WantedBy=multi-user.target" not in text:
                continue  # etcd.service itself is ready when it serves, which the boot may wait for
            if re.search(r"^Restart=", text, re.M):
                assert re.search(r"^Type=exec$", text, re.M), path
                assert "TimeoutStartSec=infinity" not in text, path
                checked.add(path.rsplit("/", 1)[1])
    assert {"etcd-seed-promote.service", "etcd-seed-report.service", "etcd-seed-auth.service"} <= checked
