"""Render: Spec + PKI + Jinja2 templates -> each node's seed files as text."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from . import etcd
from .errors import TemplateError
from .pki import PkiState
from .spec import Node, Spec

# The templates live at the top of a checkout; a built wheel carries them inside the package.
_TEMPLATE_DIRS = [Path(__file__).parent / "templates", Path(__file__).parent.parent / "templates"]

FLANNEL_KEY = "/coreos.com/network/config"  # flannel's default etcd prefix + /config
FLANNEL_ATTEMPTS = 180  # x FLANNEL_DELAY_S: 15 minutes per boot
FLANNEL_DELAY_S = 5


@dataclass(frozen=True)
class Paths:
    """Where things live on a node."""

    home: str = "/opt/etcd"
    data_dir: str = "/opt/etcd/data"
    wal_dir: str = "/opt/etcd/wal"
    ssl: str = "/etc/ssl/etcd"
    ca: str = "/etc/ssl/etcd/ca.crt"
    cert: str = "/etc/ssl/etcd/etcd.crt"
    key: str = "/etc/ssl/etcd/etcd.key"
    options: str = "/etc/etcd/options.env"
    bin: str = "/usr/local/bin"


PATHS = Paths()


@dataclass(frozen=True)
class SeedFiles:
    """Everything one node's seed holds, as text.

    `user_data` carries the node's private key; `user_data_redacted` is the same
    document with that key replaced by a marker naming its sha256, for review.
    """

    user_data: str
    user_data_redacted: str
    meta_data: str
    network_config: str
    options_env: str
    etcd_service: str
    instance_id: str


def make_environment() -> jinja2.Environment:
    """A Jinja2 environment over templates/ that fails on any undefined variable."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader([str(d) for d in _TEMPLATE_DIRS]),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # noqa: S701 - renders YAML and shell, never HTML
    )
    # A JSON string is a valid YAML double-quoted scalar.
    env.filters["yq"] = lambda value: json.dumps(str(value), ensure_ascii=False)
    env.filters["block"] = _block
    return env


def flannel_json(spec: Spec) -> str:
    """The flannel network config value, as flannel reads it from etcd."""
    assert spec.flannel is not None  # noqa: S101 - callers check
    return json.dumps({"Network": str(spec.flannel.network), "SubnetLen": spec.flannel.subnet_len,
                       "Backend": {"Type": spec.flannel.backend}}, separators=(",", ":"))


def client_endpoints(spec: Spec) -> str:
    """Every member's client URL, comma-separated."""
    return ",".join(f"https://{node.ip}:2379" for node in spec.nodes)


def redaction_marker(key_pem: bytes) -> str:
    """The text that stands in for a private key in reviewed user-data."""
    return f"# private key withheld from review; sha256 of the PEM: {hashlib.sha256(key_pem).hexdigest()}\n"


@dataclass(frozen=True)
class NodePem:
    """The PEM material a node carries: the CA, its chain (leaf + CA) and its key."""

    ca_cert_pem: bytes
    chain_pem: bytes
    key_pem: bytes


def node_pem(pki: PkiState, node: Node) -> NodePem:
    """A node's PEM material out of the run's PKI."""
    credential = pki.nodes[node.name]
    return NodePem(pki.ca.cert_pem, credential.chain_pem, credential.key_pem)


def render_node(env: jinja2.Environment, spec: Spec, node: Node, pem: NodePem,
                tarball_sha256: str) -> SeedFiles:
    """Render one node's seed files.

    Args:
        env: from make_environment().
        spec: the validated cluster definition.
        node: the member being rendered.
        pem: the node's CA, certificate chain and key.
        tarball_sha256: sha256 of the etcd release tarball, checked on the node.

    Returns:
        The node's SeedFiles.

    Raises:
        TemplateError: a template is missing or uses an undefined variable.
    """
    first = node == spec.nodes[0]
    context: dict[str, Any] = {
        "spec": spec, "node": node, "paths": PATHS, "sha256": tarball_sha256,
        "version_options": etcd.version_options(spec.etcd.minor),
        "initial_cluster": ",".join(f"{n.name}=https://{n.ip}:2380" for n in spec.nodes),
    }
    options_env = _render(env, "options.env.j2", context)
    etcd_service = _render(env, "etcd.service.j2", context)
    flannel_sh = flannel_service = ""
    if first and spec.flannel is not None:
        flannel_ctx = {**context, "endpoints": client_endpoints(spec), "flannel_key": FLANNEL_KEY,
                       "flannel_json": flannel_json(spec), "flannel_attempts": FLANNEL_ATTEMPTS,
                       "flannel_delay": FLANNEL_DELAY_S}
        flannel_sh = _render(env, "flannel-config.sh.j2", flannel_ctx)
        flannel_service = _render(env, "flannel-config.service.j2", flannel_ctx)
    install_sh = _render(env, "etcd-install.sh.j2", {**context, "flannel_sh": flannel_sh})
    user_ctx = {**context, "options_env": options_env, "etcd_service": etcd_service,
                "install_sh": install_sh, "flannel_sh": flannel_sh,
                "flannel_service": flannel_service, "ca_pem": pem.ca_cert_pem.decode(),
                "chain_pem": pem.chain_pem.decode()}
    key_pem = pem.key_pem
    user_data = _render(env, "user-data.j2", {**user_ctx, "key_pem": key_pem.decode()})
    redacted = _render(env, "user-data.j2", {**user_ctx, "key_pem": redaction_marker(key_pem)})
    network_config = _render(env, "network-config.j2", context)
    # The instance-id changes whenever anything on this node's seed changes,
    # and only then: cloud-init runs again exactly when there is news for it.
    digest = hashlib.sha256(f"{node.name}\0{user_data}\0{network_config}".encode()).hexdigest()
    instance_id = f"{node.name}-{digest[:16]}"
    meta_data = _render(env, "meta-data.j2", {**context, "instance_id": instance_id})
    return SeedFiles(user_data=user_data, user_data_redacted=redacted, meta_data=meta_data,
                     network_config=network_config, options_env=options_env,
                     etcd_service=etcd_service, instance_id=instance_id)


def _block(text: str, width: int) -> str:
    """Indent text as the body of a YAML literal block (`content: |`)."""
    pad = " " * width
    return "\n".join(pad + line if line else line for line in text.rstrip("\n").split("\n"))


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
