"""Build: Spec + PKI + bundle -> the list of artifacts under output/<cluster>/."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from importlib.metadata import version

import jinja2

from .fs import PUBLIC_MODE, SECRET_MODE, Artifact, Bundle
from .iso import SeedEntry, build_iso
from .pki import PkiState
from .render import SeedFiles, client_endpoints, node_pem, render_node
from .spec import Node, Spec

# Kept beside the generated tree so that `git add output/` can never pick up a secret.
GITIGNORE = """\
# Secrets: private keys, and the files that embed them. Review user-data.redacted instead.
*.key
*/user-data
*/seed.iso
"""


@dataclass(frozen=True)
class NodeBuild:
    """A node's rendered files, plus what the summary table shows."""

    node: Node
    files: SeedFiles
    iso_epoch: int


def _const(data: bytes) -> Callable[[], bytes]:
    return lambda: data


def render_all(env: jinja2.Environment, spec: Spec, pki: PkiState, bundle: Bundle,
               epoch: int | None) -> list[NodeBuild]:
    """Render every node. `epoch` pins ISO dates; None uses each node certificate's notBefore."""
    builds = []
    for node in spec.nodes:
        files = render_node(env, spec, node, node_pem(pki, node), bundle.sha256)
        cert = pki.nodes[node.name].cert
        iso_epoch = epoch if epoch is not None else int(cert.not_valid_before_utc.timestamp())
        builds.append(NodeBuild(node=node, files=files, iso_epoch=iso_epoch))
    return builds


def seed_entries(files: SeedFiles, bundle: Bundle) -> list[SeedEntry]:
    """What goes on a node's seed ISO, in a fixed order."""
    entries = [SeedEntry("user-data", files.user_data.encode()),
               SeedEntry("meta-data", files.meta_data.encode()),
               SeedEntry("network-config", files.network_config.encode())]
    if bundle.data is not None:
        entries.append(SeedEntry(bundle.name, bundle.data))
    return entries


def iso_inputs(entries: list[SeedEntry], epoch: int, known: dict[str, str] | None = None) -> str:
    """A digest of everything an ISO's bytes depend on, so that an unchanged ISO is not rebuilt.

    `known` gives sha256s already computed (the bundle's), by entry name.
    """
    known = known or {}
    digests = [(e.name, known.get(e.name) or hashlib.sha256(e.data).hexdigest()) for e in entries]
    described = [f"pycdlib {version('pycdlib')}", epoch, digests]
    return hashlib.sha256(json.dumps(described).encode()).hexdigest()


def plan_artifacts(env: jinja2.Environment, spec: Spec, pki: PkiState,
                   builds: list[NodeBuild], bundle: Bundle) -> list[Artifact]:
    """Every file of output/<cluster>/, in a stable order; ISOs are built only when asked for."""
    artifacts = [Artifact(".gitignore", PUBLIC_MODE, _const(GITIGNORE.encode())),
                 Artifact("pki/ca.crt", PUBLIC_MODE, _const(pki.ca.cert_pem))]
    if not pki.ca_imported:
        artifacts.append(Artifact("pki/ca.key", SECRET_MODE, _const(pki.ca.key_pem)))
    for name, credential in [*pki.nodes.items(), ("admin", pki.admin)]:
        artifacts.append(Artifact(f"pki/{name}.crt", PUBLIC_MODE, _const(credential.chain_pem)))
        artifacts.append(Artifact(f"pki/{name}.key", SECRET_MODE, _const(credential.key_pem)))
    etcdctl_env = env.get_template("etcdctl.env.j2").render(
        spec=spec, endpoints=client_endpoints(spec))
    artifacts.append(Artifact("pki/etcdctl.env", PUBLIC_MODE, _const(etcdctl_env.encode())))
    for build in builds:
        files, name = build.files, build.node.name
        for file_name, text, mode in (
            ("user-data", files.user_data, SECRET_MODE),
            ("user-data.redacted", files.user_data_redacted, PUBLIC_MODE),
            ("meta-data", files.meta_data, PUBLIC_MODE),
            ("network-config", files.network_config, PUBLIC_MODE),
            ("options.env", files.options_env, PUBLIC_MODE),
            ("etcd.service", files.etcd_service, PUBLIC_MODE),
        ):
            artifacts.append(Artifact(f"{name}/{file_name}", mode, _const(text.encode())))
        entries = seed_entries(files, bundle)
        artifacts.append(Artifact(f"{name}/seed.iso", SECRET_MODE,
                                  partial(build_iso, entries, build.iso_epoch),
                                  inputs=iso_inputs(entries, build.iso_epoch, {bundle.name: bundle.sha256})))
    return artifacts
