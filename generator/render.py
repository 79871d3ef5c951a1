"""Render: Spec + PEM material + Jinja2 templates -> each node's files as text."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from . import node as node_facts
from .decisions import Decisions
from .errors import TemplateError
from .etcd import CLIENT_PORT
from .layout import CA_CERT_NAME, CLIENTS, RESTORE_ON_SEED
from .paths import PATHS
from .spec import Client, ClientUse, Node, Spec

__all__ = ["PATHS", "NodePem", "NodePublic", "SeedFiles", "make_environment", "render_node"]

# The templates live at the top of a checkout; a built wheel carries them inside the package.
_TEMPLATE_DIRS = [Path(__file__).parent / "templates", Path(__file__).parent.parent / "templates"]

FLANNEL_KEY = "/coreos.com/network/config"  # flannel's default etcd prefix + /config
FLANNEL_ATTEMPTS = 180  # x FLANNEL_DELAY_S: 15 minutes per boot
FLANNEL_DELAY_S = 5


@dataclass(frozen=True)
class SeedFiles:
    """Every text file of one node, by its NODE_FILES name, and the node's instance-id.

    "user-data" carries the node's private key; "user-data.redacted" is the same
    document with that key (and any password hash) replaced by its sha256, for review.
    """

    texts: Mapping[str, str]
    instance_id: str


@dataclass(frozen=True)
class NodePem:
    """The secret and public material a node carries: the CAs it trusts, its chain (leaf + CA), its key,
    its SSH host key (OpenSSH private key file and public line), and the cluster's CRL (DER)."""

    ca_cert_pem: bytes
    chain_pem: bytes
    key_pem: bytes
    host_key_pem: bytes
    host_public: str
    crl_der: bytes

    def public(self) -> NodePublic:
        return NodePublic(self.ca_cert_pem, self.chain_pem, hashlib.sha256(self.key_pem).hexdigest(),
                          self.host_public, hashlib.sha256(self.host_key_pem).hexdigest(), self.crl_der)


@dataclass(frozen=True)
class NodePublic:
    """What a reviewer's checkout has of a node's material: the private keys only as their files' sha256."""

    ca_cert_pem: bytes
    chain_pem: bytes
    key_sha256: str
    host_public: str
    host_key_sha256: str
    crl_der: bytes


# Each client use: the ready-to-use files it gets under clients/, each a template and the file's suffix.
CLIENT_FILES: dict[ClientUse, tuple[tuple[str, str], ...]] = {
    ClientUse.ETCDCTL: (("client-etcdctl.env.j2", "etcdctl.env"),),
    ClientUse.FLANNEL: (("client-flanneld.env.j2", "flanneld.env"),),
    ClientUse.KUBE_APISERVER: (("client-kube-apiserver.args.j2", "kube-apiserver.args"),),
    ClientUse.PROMETHEUS: (("client-prometheus.yml.j2", "prometheus.yml"),
                           ("client-etcd-rules.yml.j2", "etcd-rules.yml")),
}

def client_files(client: Client) -> list[tuple[str, str]]:
    """A client's ready-to-use files: (path under output/<cluster>/, template)."""
    return [(f"{CLIENTS}/{client.name}.{suffix}", template) for template, suffix in CLIENT_FILES[client.use]]


def make_environment() -> jinja2.Environment:
    """A Jinja2 environment over templates/ that fails on any undefined variable."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader([str(d) for d in _TEMPLATE_DIRS]),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # noqa: S701 - renders YAML and shell, never HTML
    )
    env.filters["yq"] = yaml_quote
    env.filters["sh"] = lambda value: shlex.quote(str(value))
    env.filters["block"] = _block
    return env


def yaml_quote(value: object) -> str:
    """A YAML double-quoted scalar: JSON's ASCII-only escaping is a subset of YAML's."""
    return json.dumps(str(value), ensure_ascii=True)


def flannel_json(spec: Spec) -> str:
    """The flannel network config value, as flannel reads it from etcd."""
    assert spec.flannel is not None  # noqa: S101 - callers check
    return json.dumps({"Network": str(spec.flannel.network), "SubnetLen": spec.flannel.subnet_len,
                       "Backend": {"Type": spec.flannel.backend}}, separators=(",", ":"))


def redaction_marker(key_sha256: str) -> str:
    """The text that stands in for a private key in reviewed user-data."""
    return f"# private key withheld from review; sha256 of the PEM: {key_sha256}\n"


def password_marker(password_hash: str) -> str:
    """What stands in for the admin password hash in reviewed user-data."""
    return f"withheld from review; sha256 of the hash: {hashlib.sha256(password_hash.encode()).hexdigest()}"


def render_etcdctl_env(env: jinja2.Environment, spec: Spec, ca_file: str = CA_CERT_NAME) -> str:
    """layout.ETCDCTL_ENV: endpoints and file names for etcdctl with the admin certificate.

    `ca_file`: what clients trust (layout.trust_name).
    """
    return _render(env, "etcdctl.env.j2", {"spec": spec, "endpoints": node_facts.client_endpoints(spec),
                                           "ca_file": ca_file})


def render_client(env: jinja2.Environment, spec: Spec, client: Client, template: str,
                  ca_file: str = CA_CERT_NAME) -> str:
    """One of a client's ready-to-use files (see CLIENT_FILES): flanneld's variables, kube-apiserver's flags,
    etcdctl's variables, or Prometheus' scrape job and alert rules."""
    return _render(env, template, {
        "spec": spec, "client": client, "endpoints": node_facts.client_endpoints(spec), "ca_file": ca_file,
        "flannel_prefix": FLANNEL_KEY.rsplit("/", 1)[0],
        "targets": [f"{node.ip}:{CLIENT_PORT}" for node in spec.nodes], "job": f"etcd-{spec.name}",
        "quota_ratio": node_facts.NEAR_QUOTA_PERCENT / 100})


def render_node(env: jinja2.Environment, spec: Spec, decided: Decisions, node: Node, pem: NodePem,
                tarball_sha256: str) -> SeedFiles:
    """Render one node's files, user-data with its key included.

    Args:
        env: from make_environment().
        spec: the validated cluster definition.
        decided: what the build settled that the spec leaves open.
        node: the member being rendered.
        pem: the node's CA, certificate chain and key.
        tarball_sha256: sha256 of the etcd release tarball, checked on the node.

    Raises:
        TemplateError: a template is missing, uses an undefined variable, or would emit unsafe text.
    """
    member = _facts(spec, decided, node)
    public = _render_public(env, spec, node, member, pem.public(), tarball_sha256)
    user_data = _render_user_data(env, spec, node, member, pem.public(), tarball_sha256, pem.key_pem.decode(),
                                  pem.host_key_pem.decode(), spec.admin.password_hash if spec.admin else None,
                                  public.instance_id)
    return SeedFiles(texts={"user-data": user_data, **public.texts}, instance_id=public.instance_id)


def render_public(env: jinja2.Environment, spec: Spec, decided: Decisions, node: Node, pem: NodePublic,
                  tarball_sha256: str) -> SeedFiles:
    """Render the files of a node that are committed: everything but user-data and the ISO.

    Needs no secret: the keys appear only as their sha256, so a reviewer's checkout renders the same.
    """
    return _render_public(env, spec, node, _facts(spec, decided, node), pem, tarball_sha256)


def _facts(spec: Spec, decided: Decisions, node: Node) -> node_facts.Facts:
    try:
        return node_facts.facts(spec, decided, node)
    except ValueError as exc:
        raise TemplateError(str(exc)) from None


def _render_public(env: jinja2.Environment, spec: Spec, node: Node, member: node_facts.Facts, pem: NodePublic,
                   tarball_sha256: str) -> SeedFiles:
    context = _context(spec, node, member, tarball_sha256)
    password = password_marker(spec.admin.password_hash) if spec.admin and spec.admin.password_hash else None
    markers = (redaction_marker(pem.key_sha256), redaction_marker(pem.host_key_sha256), password)
    network_config = _render(env, "network-config.j2", context)
    # The instance-id changes whenever anything on this node's seed changes, and only
    # then: the redacted user-data names the key and password by their sha256. The install step carries
    # it too (it records the seed it applied), so it is taken over the user-data without it.
    unnamed = _render_user_data(env, spec, node, member, pem, tarball_sha256, *markers, seed_id="")
    digest = hashlib.sha256(f"{node.name}\0{unnamed}\0{network_config}".encode()).hexdigest()
    instance_id = f"{node.name}-{digest[:16]}"
    redacted = _render_user_data(env, spec, node, member, pem, tarball_sha256, *markers, seed_id=instance_id)
    texts = {
        "user-data.redacted": redacted,
        "meta-data": _render(env, "meta-data.j2", {**context, "instance_id": instance_id}),
        "network-config": network_config,
        "options.env": _render(env, "options.env.j2", context),
        "etcd.service": _render(env, "etcd.service.j2", context),
    }
    return SeedFiles(texts=texts, instance_id=instance_id)


def _context(spec: Spec, node: Node, member: node_facts.Facts, tarball_sha256: str) -> dict[str, Any]:
    return {"spec": spec, "node": node, "paths": PATHS, "sha256": tarball_sha256, "options": member.options,
            "disk": member.disk, "disk_owner": member.disk_owner, "units": member.units,
            "defrag_calendar": member.defrag_calendar, "auth_on": member.auth_on}


def _render_user_data(env: jinja2.Environment, spec: Spec, node: Node, member: node_facts.Facts, pem: NodePublic,
                      tarball_sha256: str, key_text: str, host_key_text: str, password_hash: str | None,
                      seed_id: str) -> str:
    context = _context(spec, node, member, tarball_sha256)
    extra: dict[str, object] = {"client_url": member.client_url, "endpoints": member.founder_endpoints}
    if member.flannel:
        extra |= {"flannel_key": FLANNEL_KEY, "flannel_json": flannel_json(spec),
                  "flannel_attempts": FLANNEL_ATTEMPTS, "flannel_delay": FLANNEL_DELAY_S}
    sources: dict[str, str | bytes] = {
        node_facts.CA_PEM: pem.ca_cert_pem.decode(),
        node_facts.KEY_PEM: key_text,
        node_facts.CHAIN_PEM: pem.chain_pem.decode(),
        node_facts.MEMBER_JSON: json.dumps(member.member_config, indent=2, sort_keys=True),
        node_facts.CRL_DER: pem.crl_der,
    }
    staged = []
    for row in member.staged:
        content: str | bytes
        if row.source in sources:
            content = sources[row.source]
        elif row.source.endswith(".j2"):
            content = _render(env, row.source, {**context, **extra})
        else:
            content = _source(env, row.source)
        # The key's digest is its PEM's sha256, which a reviewer's checkout has too (PEM ends in one newline).
        digest = pem.key_sha256 if row.source == node_facts.KEY_PEM else None
        staged.append(_staged(row.name, content, row.dest, row.mode, row.etcd_owned, row.restart, digest))
    install_sh = _render(env, "etcd-install.sh.j2", {**context, "staged": staged,
                                                     "enabled_units": member.enabled_units,
                                                     "restore": _restore_context(spec, member),
                                                     "seed_id": seed_id})
    return _render(env, "user-data.j2", {
        **context, "staged": staged, "install_sh": install_sh,
        "rearm_sh": _render(env, "etcd-seed-rearm.sh.j2", context),
        "host_key": host_key_text, "host_public": pem.host_public, "password_hash": password_hash})


@dataclass(frozen=True)
class Staged:
    """A row of node.STAGED_FILES with its content, as user-data's write_files and the install script
    read it."""

    name: str  # under PATHS.staged
    content: str
    dest: str
    mode: str
    etcd_owned: bool  # owned by etcd (which reads it), else by root
    restart: bool  # etcd must restart to see it; else it reloads it (or its next start reads it)
    sha256: str  # of the staged file as cloud-init writes it: the block's text and one newline, or the bytes
    binary: bool = False  # content is base64 (write_files encoding b64), sha256 that of the decoded bytes


def _staged(name: str, content: str | bytes, dest: str, mode: str, etcd_owned: bool = False, restart: bool = False,
            sha256: str | None = None) -> Staged:
    """A staged file; bytes (the CRL) travel as base64, which cloud-init decodes (write_files encoding b64)."""
    if isinstance(content, bytes):
        return Staged(name, base64.b64encode(content).decode(), dest, mode, etcd_owned, restart,
                      sha256 or hashlib.sha256(content).hexdigest(), binary=True)
    digest = sha256 or hashlib.sha256((content.rstrip("\n") + "\n").encode()).hexdigest()
    return Staged(name, content, dest, mode, etcd_owned, restart, digest)


def _restore_context(spec: Spec, member: node_facts.Facts) -> dict[str, str] | None:
    """What the install step needs to restore this member from the snapshot on its seed."""
    restore = spec.etcd.restore
    if restore is None or member.restore_argv is None:
        return None
    assert member.snapshot_sha256 is not None  # noqa: S101 - node.facts refuses a restore without it
    bin_dir = shlex.quote(PATHS.bin)
    tool = f'"$root"{bin_dir}/etcdutl' if spec.etcd.release.has_etcdutl else f'ETCDCTL_API=3 "$root"{bin_dir}/etcdctl'
    return {"name": RESTORE_ON_SEED, "sha256": member.snapshot_sha256, "tool": tool,
            "argv": " ".join(shlex.quote(a) for a in member.restore_argv),
            "bumped": f" (revision +{restore.bump_revision})" if restore.bump_revision else ""}


def _source(env: jinja2.Environment, name: str) -> str:
    """A file of templates/ as it is, for a script that has nothing to fill in."""
    try:
        source, _, _ = env.loader.get_source(env, name)  # type: ignore[union-attr]
    except jinja2.TemplateNotFound:
        raise TemplateError(f"templates/{name}: not found") from None
    return source


_NOT_IN_BLOCK = re.compile(r"[^\n\x20-\x7e]")


def _block(text: str, width: int) -> str:
    """Indent text as the body of a YAML literal block (`content: |`).

    Only printable ASCII and newlines may enter a block: YAML also breaks lines at
    \\r, \\x85, \\u2028 and \\u2029, which would end the block and start new keys.
    """
    body = text.rstrip("\n")
    bad = sorted(set(_NOT_IN_BLOCK.findall(body)))
    if bad:
        raise jinja2.TemplateRuntimeError(f"refusing to put {bad!r} into a YAML block")
    pad = " " * width
    return "\n".join(pad + line if line else line for line in body.split("\n"))


def _render(env: jinja2.Environment, name: str, context: dict[str, Any]) -> str:
    try:
        return env.get_template(name).render(context)
    except jinja2.TemplateNotFound:
        raise TemplateError(f"templates/{name}: not found (looked in "
                            f"{', '.join(str(d) for d in _TEMPLATE_DIRS)})") from None
    except jinja2.UndefinedError as exc:
        raise TemplateError(f"templates/{name}: {exc.message}") from None
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"templates/{name}:{exc.lineno}: {exc.message}") from None
    except jinja2.TemplateRuntimeError as exc:
        raise TemplateError(f"templates/{name}: {exc.message}") from None
