"""Property: a hostile string in any spec field is refused by name, or reaches every output only as data.

Each output is read back by its real parser: PyYAML for user-data, meta-data and
network-config (cloud-init's own loader, as in tests/cli/test_injection.py), systemd's env-file
parser and sh for options.env, and sh for the install script.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from generator import fields as spec_fields
from generator import node as node_facts
from generator.decisions import decide
from generator.errors import SpecError
from generator.loader import load_spec
from generator.render import PATHS, SeedFiles, client_files, make_environment, render_client, render_node
from generator.spec import ClientUse, Spec
from tests.helpers.parsers import cloud_init_available, cloud_init_load, sh_env, systemd_available, systemd_env
from tests.helpers.specs import ROOT, fake_pem, put

# Every character that ends a line for YAML, sh or systemd, plus what quotes, escapes,
# comments, expands or separates in any of them.
HOSTILE = ["\n", "\r", "\x85", "\u2028", "\u2029", "\x0b", "\x0c", "\x00", "\t", " ", "'", '"', "`", "\\", "$",
           "$(", ";", "&", "|", "#", "%", "{", "}", "[", "]", ",", ":", "- ", "*", "!", "@", "=", "\ufeff", "\u0661"]
BASE: dict[str, Any] = {
    "cluster": {"name": "demo", "domain": "example.com"},
    "network": {"prefix": 24, "gateway": "10.8.0.254", "dns": ["10.8.0.254"], "search": ["example.com"],
                "ntp": {"servers": ["10.8.0.254", "ntp1.example.com"], "pools": ["pool.example.com"]}},
    "nodes": [{"name": "etcd01", "ip": "10.8.0.1", "mac": "52:54:00:00:00:01", "fqdn": "etcd01.example.com"},
              {"name": "etcd02", "ip": "10.8.0.2", "mac": "52:54:00:00:00:02",
               "data_device": "/dev/disk/by-path/pci-0000:00:05.0", "data_fs": "xfs"}],
    "etcd": {"version": "3.5.1", "url": "https://dl.example/etcd.tgz?a=1&b=2", "sha256": "a" * 64,
             "token": "tok-1", "auto_compaction_mode": "periodic", "auto_compaction_retention": "2h",
             "data_device": "/dev/disk/by-id/virtio-etcd_1", "data_fs": "ext4"},
    "pki": {"key_type": "ecdsa-p256"},
    "backup": {"schedule": "Mon..Fri *-*-* 02:30", "dir": "/srv/etcd-backup", "keep": 5},
    "defrag": {"schedule": "Sat,Sun 23:40", "stagger_minutes": 9},
    "flannel": {"network": "10.2.0.0/16", "backend": "vxlan"},
    "admin": {"name": "ops", "ssh_authorized_keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB ops@example"],
              "password_hash": "$6$rounds=5000$saltsaltsaltsalt$" + "a" * 86},
    "clients": [{"name": "flannel", "use": "flannel", "dir": "/etc/flannel-etcd"},
                {"name": "kube", "use": "kube-apiserver", "cn": "kube-apiserver-etcd-client", "o": "system:masters"},
                {"name": "reader", "cn": "backup reader", "access": [{"prefix": "/app/", "mode": "read"},
                                                                     {"key": "motd", "mode": "readwrite"}]},
                {"name": "metrics", "use": "prometheus", "dir": "/srv/prom-etcd"}],
}


def _instances(data: Any, path: str) -> list[str]:
    """Where a table path ("nodes[].name", "network.dns") is set in `data`, as dotted paths; a list of
    strings gives one path per item."""
    head, _, rest = path.partition(".")
    name, many = head.removesuffix("[]"), head.endswith("[]")
    if not isinstance(data, dict) or name not in data:
        return []
    value = data[name]
    if many:
        return [f"{name}.{i}.{inner}" for i, item in enumerate(value) for inner in _instances(item, rest)]
    if rest:
        return [f"{name}.{inner}" for inner in _instances(value, rest)]
    return [f"{name}.{i}" for i in range(len(value))] if isinstance(value, list) else [name]


# Every string field the table says this test feeds, wherever BASE sets it.
FIELDS = [where for row in spec_fields.FIELDS if not row.hostile for path in row.paths
          for where in _instances(BASE, path)]
USER_DATA_KEYS = {"hostname", "fqdn", "manage_etc_hosts", "ssh_pwauth", "ssh_deletekeys", "ssh_keys", "groups",
                  "users", "write_files", "runcmd", "ntp", "bootcmd"}
# The bootcmd holds no spec value: every spec, hostile or not, gets this one script.
REARM = make_environment().get_template("etcd-seed-rearm.sh.j2").render(paths=PATHS)
WRITE_FILES = {f"{PATHS.staged}/{name}" for name in (
    "ca.crt", "etcd.crt", "etcd.key", "crl.der", "options.env", "etcd.service", "member.json",
    "etcd-seed-report.service", "etcd-seed-boot.service", "etcd-seed-clock.service", "etcd-seed-member",
    "etcd-backup.service", "etcd-backup.timer", "etcd-seed-backup", "etcd-defrag.service", "etcd-defrag.timer",
    *(f"etcd_seed_node.{job}.py" for job in ("__init__", "transport", "cli", "prepare", "report", "clock", "defrag")))
} | {PATHS.install_bin}
FLANNEL_FILES = {f"{PATHS.staged}/etcd-flannel-config", f"{PATHS.staged}/etcd-flannel-config.service"}
# It applies etcd's users and roles.
FIRST_NODE_FILES = {f"{PATHS.staged}/etcd-seed-auth.service", f"{PATHS.staged}/etcd_seed_node.auth.py"}


def _get(data: Any, path: str) -> Any:
    for part in path.split("."):
        data = data[int(part)] if isinstance(data, list) else data[part]
    return data


@st.composite
def hostile_specs(draw: st.DrawFn) -> tuple[str, str]:
    """A spec with one field made hostile: its valid value with hostile pieces put in, or hostile text alone."""
    field = draw(st.sampled_from(FIELDS))
    valid = str(_get(BASE, field))
    pieces = st.sampled_from(HOSTILE) | st.text(min_size=1, max_size=3)
    where = draw(st.integers(min_value=0, max_value=len(valid)))
    value = draw(st.one_of(
        st.builds(lambda p: valid[:where] + p + valid[where:], pieces),
        st.builds(lambda p: valid + p, pieces),
        st.lists(pieces, min_size=1, max_size=5).map("".join),
    ))
    data = yaml.safe_load(yaml.safe_dump(BASE))
    put(data, field, value)
    return field, yaml.safe_dump(data, allow_unicode=True)


def _load(text: str) -> Spec | SpecError:
    try:
        return load_spec(text, base_dir=ROOT)[0]
    except SpecError as exc:
        return exc


def _render(spec: Spec) -> dict[str, SeedFiles]:
    env = make_environment()
    return {n.name: render_node(env, spec, decide(spec), n, fake_pem(n.name), "b" * 64) for n in spec.nodes}


def check_outputs(spec: Spec, rendered: dict[str, SeedFiles], tmp: Path,
                  env_parser: Callable[[Path], dict[str, str]] | None) -> None:
    """Every output parses to exactly the expected keys, files and values."""
    for node in spec.nodes:
        texts = rendered[node.name].texts
        user_data = yaml.safe_load(texts["user-data"])
        assert set(user_data) == USER_DATA_KEYS
        assert user_data["hostname"] == node.name and user_data["fqdn"] == node.fqdn
        paths = {f["path"] for f in user_data["write_files"]}
        assert paths == WRITE_FILES | (FLANNEL_FILES if node == spec.nodes[0] and spec.flannel else set()) \
            | (FIRST_NODE_FILES if node == spec.nodes[0] else set())
        assert [u["name"] for u in user_data["users"]] == ["etcd"] + ([spec.admin.name] if spec.admin else [])
        if spec.admin:
            admin = user_data["users"][1]
            assert admin.get("ssh_authorized_keys", []) == list(spec.admin.ssh_authorized_keys)
            assert admin.get("passwd") == spec.admin.password_hash
        assert user_data["runcmd"] == [["/usr/local/sbin/etcd-seed-install"]]
        assert user_data["bootcmd"] == [REARM]
        assert spec.network.ntp is not None
        assert user_data["ntp"] == {"enabled": True, "ntp_client": "auto", "servers": list(spec.network.ntp.servers),
                                    "pools": list(spec.network.ntp.pools)}
        meta = yaml.safe_load(texts["meta-data"])
        assert meta == {"instance-id": rendered[node.name].instance_id, "local-hostname": node.name}
        network = yaml.safe_load(texts["network-config"])
        primary = network["ethernets"]["primary"]
        assert primary["match"] == {"macaddress": node.mac}
        assert primary["addresses"] == [f"{node.ip}/{spec.network.prefix}"]
        assert primary["nameservers"]["search"] == list(spec.network.search)
        options = {f["path"]: f["content"] for f in user_data["write_files"]}[f"{PATHS.staged}/options.env"]
        assert options == texts["options.env"]
        if env_parser is not None:
            path = tmp / f"{node.name}.env"
            path.write_text(options)
            assert env_parser(path) == node_facts.options(spec, decide(spec), node)
        script = {f["path"]: f["content"] for f in user_data["write_files"]}["/usr/local/sbin/etcd-seed-install"]
        assert subprocess.run(["sh", "-n", "-c", script], check=False).returncode == 0
        url_line = next(line for line in script.splitlines() if line.startswith("url="))
        done = subprocess.run(["sh", "-euc", f'{url_line}\nprintf %s "$url"'], capture_output=True, text=True,
                              check=True)
        assert done.stdout == spec.etcd.url
        disk = node_facts.data_disk(spec, node)
        if disk:  # the device reaches the install script, and /etc/fstab through it, as one word
            lines = [line for line in script.splitlines() if line.startswith(("data_dev=", "data_fs=", "holder_want="))]
            done = subprocess.run(["sh", "-euc", "\n".join(lines) + '\nprintf "%s\\n" "$data_dev" "$data_fs" '
                                   '"$holder_want"'], capture_output=True, text=True, check=True)
            assert done.stdout.split("\n")[:3] == [disk.device, disk.fs, node_facts.disk_owner(spec, node)]
            assert len(disk.device.split()) == 1
        files = {f["path"]: f["content"] for f in user_data["write_files"]}
        assert json.loads(files[f"{PATHS.staged}/member.json"]) == node_facts.member_config(spec, decide(spec), node)
        backup = files[f"{PATHS.staged}/etcd-seed-backup"]
        assert subprocess.run(["sh", "-n", "-c", backup], check=False).returncode == 0
        dir_line = next(line for line in backup.splitlines() if line.startswith("dir="))
        done = subprocess.run(["sh", "-euc", f'root=\n{dir_line}\nprintf %s "$dir"'], capture_output=True, text=True,
                              check=True, env={"PATH": "/usr/bin:/bin"})
        assert done.stdout == spec.backup.dir
        timer = files[f"{PATHS.staged}/etcd-backup.timer"]
        assert [line for line in timer.splitlines() if line.startswith("OnCalendar=")] == \
            [f"OnCalendar={spec.backup.schedule}"]
        defrag = files[f"{PATHS.staged}/etcd-defrag.timer"]
        calendar = [line[11:] for line in defrag.splitlines() if line.startswith("OnCalendar=")]
        assert calendar == [spec.defrag.on_calendar(spec.nodes.index(node))]
        if shutil.which("systemd-analyze"):  # systemd's own parser accepts every schedule the spec accepts
            for schedule in (spec.backup.schedule, *calendar):
                assert subprocess.run(["systemd-analyze", "calendar", schedule], capture_output=True,
                                      check=False).returncode == 0, schedule
    check_client_files(spec, tmp, env_parser)


def check_client_files(spec: Spec, tmp: Path, env_parser: Callable[[Path], dict[str, str]] | None) -> None:
    """Each consumer file is comment lines and exactly its settings, read back by systemd's parser or sh."""
    env = make_environment()
    endpoints = node_facts.client_endpoints(spec)
    for client in spec.clients:
        where = f"{client.dir}/{client.name}"
        if client.use is ClientUse.PROMETHEUS:
            (_, job_template), (_, rules_template) = client_files(client)
            job = yaml.safe_load(render_client(env, spec, client, job_template))
            assert job["rule_files"] == [f"{client.dir}/etcd-rules.yml"]
            assert job["scrape_configs"][0]["tls_config"] == {
                "ca_file": f"{client.dir}/ca.crt", "cert_file": f"{where}.crt", "key_file": f"{where}.key"}
            assert job["scrape_configs"][0]["static_configs"][0]["targets"] == [f"{n.ip}:2379" for n in spec.nodes]
            rules = yaml.safe_load(render_client(env, spec, client, rules_template))
            assert [g["name"] for g in rules["groups"]] == [f"etcd-{spec.name}"]
            continue
        text = render_client(env, spec, client, client_files(client)[0][1])
        path = tmp / f"{client.name}.client"
        path.write_text(text)
        settings = [line for line in text.splitlines() if not line.startswith("#")]
        if client.use is ClientUse.KUBE_APISERVER:
            assert settings == [f"--etcd-servers={endpoints}", f"--etcd-cafile={client.dir}/ca.crt",
                                f"--etcd-certfile={where}.crt", f"--etcd-keyfile={where}.key"]
        elif client.use is ClientUse.FLANNEL:
            want = {"FLANNELD_ETCD_ENDPOINTS": endpoints, "FLANNELD_ETCD_CAFILE": f"{client.dir}/ca.crt",
                    "FLANNELD_ETCD_CERTFILE": f"{where}.crt", "FLANNELD_ETCD_KEYFILE": f"{where}.key",
                    "FLANNELD_ETCD_PREFIX": "/coreos.com/network"}
            assert settings == [f"{k}={v}" for k, v in want.items()]
            if env_parser is not None:
                assert env_parser(path) == want
        else:
            assert sh_env(path) == {"ETCDCTL_API": "3", "ETCDCTL_ENDPOINTS": endpoints,
                                    "ETCDCTL_CACERT": f"{client.dir}/ca.crt", "ETCDCTL_CERT": f"{where}.crt",
                                    "ETCDCTL_KEY": f"{where}.key"}


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(hostile_specs())
def test_hostile_field_is_refused_or_inert(tmp_path: Path, case: tuple[str, str]) -> None:
    """One hostile field: the spec is refused naming that field, or every output holds the value as data only."""
    field, text = case
    spec = _load(text)
    if isinstance(spec, SpecError):
        event("refused")
        parent = field.rsplit(".", 1)[0]
        assert any(m.startswith((field, parent)) for m in spec.messages), (field, spec.messages)
        return
    event(f"accepted {field}")
    parser = systemd_env if systemd_available() is None else None
    check_outputs(spec, _render(spec), tmp_path, parser)


def test_every_string_field_of_the_table_is_fed() -> None:
    """A field the table says this test feeds is set in BASE, so the property draws it."""
    missing = [path for row in spec_fields.FIELDS if not row.hostile for path in row.paths
               if not _instances(BASE, path)]
    assert not missing, f"set these in BASE, or give their rows a reason in generator/fields.py: {missing}"
    assert {"nodes.0.name", "clients.2.access.1.key", "network.ntp.servers.1",
            "admin.ssh_authorized_keys.0"} <= set(FIELDS)


def test_base_spec_renders_and_parses(tmp_path: Path) -> None:
    """The property's starting point is a valid spec whose outputs pass every check, so refusals mean something."""
    spec, _ = load_spec(yaml.safe_dump(BASE), base_dir=ROOT)
    check_outputs(spec, _render(spec), tmp_path, systemd_env if systemd_available() is None else None)


@pytest.mark.skipif(cloud_init_available() is not None, reason=str(cloud_init_available()))
def test_cloud_init_reads_what_pyyaml_reads() -> None:
    """cloud-init's own loader reads each rendered user-data and meta-data as PyYAML does."""
    spec, _ = load_spec(yaml.safe_dump(BASE), base_dir=ROOT)
    texts = [t for files in _render(spec).values() for t in (files.texts["user-data"], files.texts["meta-data"])]
    assert cloud_init_load(texts) == [yaml.safe_load(t) for t in texts]
