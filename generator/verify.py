"""Verify: check an output tree against its spec, its CA, the manifest and CIS §2, without the clock or disk."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jinja2
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from . import etcd, manifest
from .errors import OutputError
from .fs import SECRET_MODE
from .iso import read_iso
from .pki import ADMIN_IDENTITY, Identity, PrivateKey, check_leaf, node_identity, public_der
from .render import PATHS, NodePem, render_node
from .spec import Spec

# CIS Kubernetes Benchmark section 2 (etcd): each setting and the value it requires.
CIS_REQUIRED = {
    "ETCD_CLIENT_CERT_AUTH": "true",       # 2.2
    "ETCD_PEER_CLIENT_CERT_AUTH": "true",  # 2.5
}
CIS_SET = ("ETCD_CERT_FILE", "ETCD_KEY_FILE",            # 2.1
           "ETCD_PEER_CERT_FILE", "ETCD_PEER_KEY_FILE")  # 2.4
CIS_NOT_TRUE = ("ETCD_AUTO_TLS", "ETCD_PEER_AUTO_TLS")   # 2.3, 2.6


@dataclass(frozen=True)
class Finding:
    """One problem: the file it is about, what is wrong, and whether it fails the check."""

    path: str
    message: str
    error: bool = True

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def parse_env(text: str) -> dict[str, str]:
    """The variables of an EnvironmentFile (KEY=value lines; # comments)."""
    values = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip().strip('"')
    return values


def verify_tree(spec: Spec, files: Mapping[str, bytes], modes: Mapping[str, int], now: dt.datetime,
                warn_days: int, fail_days: int, env: jinja2.Environment) -> list[Finding]:
    """Every problem in output/<cluster>/, as findings.

    Args:
        spec: the cluster definition the tree should match.
        files: every file under output/<cluster>/, by relative path.
        modes: the permission bits of each file.
        now: the time the expiry thresholds count from.
        warn_days: a certificate closer than this to expiry is a warning.
        fail_days: closer than this (or expired) is an error.
        env: the templates, to render what the spec asks for.
    """
    found: list[Finding] = []
    _check_manifest(files, modes, found)
    ca = _check_ca(files, modes, now, warn_days, fail_days, found)
    if ca is None:
        return found
    identities = {f"pki/{n.name}.crt": node_identity(spec, n) for n in spec.nodes}
    identities["pki/admin.crt"] = ADMIN_IDENTITY
    for cert_path, identity in identities.items():
        _check_leaf_file(cert_path, identity, ca, spec, files, modes, now, warn_days, fail_days, found)
    for node in spec.nodes:
        _check_node(spec, node.name, files, env, found)
    return found


def _check_manifest(files: Mapping[str, bytes], modes: Mapping[str, int], found: list[Finding]) -> None:
    try:
        document = manifest.parse_manifest(files.get(manifest.NAME))
    except OutputError as exc:
        found.append(Finding(manifest.NAME, exc.messages[0].split(": ", 1)[-1]))
        return
    if manifest.NAME not in files:
        found.append(Finding(manifest.NAME, "missing; run a build"))
        return
    for path, entry in sorted(document["files"].items()):
        if path not in files:
            # A reviewer's checkout has no secrets (.gitignore): say so, and check the rest.
            secret = entry.get("mode") == f"{SECRET_MODE:04o}"
            found.append(Finding(path, "secret not present here; checks that need it were skipped" if secret
                                 else "listed in the manifest but missing", error=not secret))
            continue
        if hashlib.sha256(files[path]).hexdigest() != entry.get("sha256"):
            found.append(Finding(path, "sha256 differs from the manifest (changed since the build)"))
        secret = path.endswith(".key") or entry.get("mode") == f"{SECRET_MODE:04o}"
        if secret and modes[path] & 0o077:
            found.append(Finding(path, f"mode is {modes[path]:04o}; a secret must be 0600"))
    for path in files:
        sealed_state = path.endswith(".key.age") or path == "pki/sealed.json"  # written by `seal`
        if path not in document["files"] and path != manifest.NAME and not sealed_state:
            found.append(Finding(path, "not in the manifest", error=False))


def _expiry(path: str, cert: x509.Certificate, now: dt.datetime, warn_days: int, fail_days: int,
            found: list[Finding]) -> None:
    left = cert.not_valid_after_utc - now
    when = f"{cert.not_valid_after_utc:%Y-%m-%d}"
    if left <= dt.timedelta(0):
        found.append(Finding(path, f"expired on {when}"))
    elif left <= dt.timedelta(days=fail_days):
        found.append(Finding(path, f"expires on {when}, within {fail_days} days"))
    elif left <= dt.timedelta(days=warn_days):
        found.append(Finding(path, f"expires on {when}, within {warn_days} days", error=False))


def _check_ca(files: Mapping[str, bytes], modes: Mapping[str, int], now: dt.datetime, warn_days: int,
              fail_days: int, found: list[Finding]) -> x509.Certificate | None:
    try:
        cert = x509.load_pem_x509_certificate(files["pki/ca.crt"])
    except (KeyError, ValueError):
        found.append(Finding("pki/ca.crt", "missing or not a PEM certificate"))
        return None
    _expiry("pki/ca.crt", cert, now, warn_days, fail_days, found)
    key = _load_key(files, "pki/ca.key", found)
    if key is not None and public_der(key) != public_der(cert):
        found.append(Finding("pki/ca.key", "does not match pki/ca.crt"))
    return cert


def _check_leaf_file(cert_path: str, identity: Identity, ca: x509.Certificate, spec: Spec, files: Mapping[str, bytes],
                     modes: Mapping[str, int], now: dt.datetime, warn_days: int, fail_days: int,
                     found: list[Finding]) -> None:
    try:
        chain = x509.load_pem_x509_certificates(files[cert_path])
    except (KeyError, ValueError):
        found.append(Finding(cert_path, "missing or not a PEM certificate"))
        return
    cert = chain[0]
    key = _load_key(files, cert_path[:-4] + ".key", found)
    for problem in check_leaf(cert, key, ca, identity):
        found.append(Finding(cert_path, problem))
    if chain[1:] != [ca]:
        found.append(Finding(cert_path, "must hold the leaf followed by the CA certificate"))
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound as exc:
        found.append(Finding(cert_path, f"lacks {exc.oid._name}"))
        return
    if constraints.value.ca or not constraints.critical:
        found.append(Finding(cert_path, "basicConstraints must be critical CA:FALSE"))
    rsa_key = isinstance(cert.public_key(), rsa.RSAPublicKey)
    if not usage.digital_signature or (rsa_key and not usage.key_encipherment) or usage.key_cert_sign:
        found.append(Finding(cert_path, "keyUsage must be digitalSignature"
                             + (" and keyEncipherment" if rsa_key else "") + ", and not keyCertSign"))
    _expiry(cert_path, cert, now, warn_days, fail_days, found)


def _check_node(spec: Spec, name: str, files: Mapping[str, bytes], env: jinja2.Environment,
                found: list[Finding]) -> None:
    node = next(n for n in spec.nodes if n.name == name)
    options_path, unit_path = f"{name}/options.env", f"{name}/etcd.service"
    if options_path not in files or unit_path not in files:
        found.append(Finding(f"{name}/", "options.env or etcd.service is missing"))
        return
    options = parse_env(files[options_path].decode(errors="replace"))
    _check_options(options_path, options, spec, found)
    _check_unit(unit_path, files[unit_path].decode(errors="replace"), options, found)
    user_data = files.get(f"{name}/user-data")
    if user_data is None:
        return  # a reviewer's checkout: the full user-data is secret and not committed
    try:
        pem = NodePem(files["pki/ca.crt"], files[f"pki/{name}.crt"], files[f"pki/{name}.key"])
    except KeyError:
        return  # reported above
    sha = re.search(rb"^ *want=([0-9a-f]{64})$", user_data, re.MULTILINE)
    expected = render_node(env, spec, node, pem, sha.group(1).decode() if sha else "")
    for rel, have, want in ((options_path, files[options_path], expected.options_env),
                            (unit_path, files[unit_path], expected.etcd_service),
                            (f"{name}/user-data", user_data, expected.user_data),
                            (f"{name}/network-config", files.get(f"{name}/network-config"),
                             expected.network_config),
                            (f"{name}/meta-data", files.get(f"{name}/meta-data"), expected.meta_data)):
        if have != want.encode():
            found.append(Finding(rel, "differs from what the spec renders ('plan' shows the change)"))
    redacted = files.get(f"{name}/user-data.redacted")
    if redacted is not None and redacted.decode() != expected.user_data_redacted:
        found.append(Finding(f"{name}/user-data.redacted", "does not match user-data with the key withheld"))
    _check_user_data(name, user_data, found)
    iso = files.get(f"{name}/seed.iso")
    if iso is not None:
        try:
            on_seed = read_iso(iso)
        except Exception:
            found.append(Finding(f"{name}/seed.iso", "cannot be read as an ISO"))
            return
        for seed_name in ("user-data", "meta-data", "network-config"):
            if on_seed.get(seed_name) != files.get(f"{name}/{seed_name}"):
                found.append(Finding(f"{name}/seed.iso", f"its {seed_name} differs from {name}/{seed_name}"))


def _check_options(path: str, options: Mapping[str, str], spec: Spec, found: list[Finding]) -> None:
    for key in CIS_SET:
        if not options.get(key):
            found.append(Finding(path, f"{key} is not set (CIS 2.1/2.4)"))
    for key, value in CIS_REQUIRED.items():
        if options.get(key, "").lower() != value:
            found.append(Finding(path, f"{key} must be {value} (CIS 2.2/2.5)"))
    for key in CIS_NOT_TRUE:
        if options.get(key, "false").lower() == "true":
            found.append(Finding(path, f"{key} must not be true (CIS 2.3/2.6)"))
    known = etcd.known_variables(spec.etcd.minor)
    removed = etcd.removed_variables(spec.etcd.minor)
    for key in options:
        if key in removed:
            found.append(Finding(path, f"{key} was removed in etcd {spec.etcd.minor[0]}.{spec.etcd.minor[1]}"))
        elif key.startswith("ETCD_") and key not in known:
            found.append(Finding(path, f"{key} is not an etcd setting (etcd only warns and ignores it)"))
    for key in ("ETCD_LISTEN_CLIENT_URLS", "ETCD_LISTEN_PEER_URLS"):
        for url in filter(None, options.get(key, "").split(",")):
            if url.startswith("http://") and not (key == "ETCD_LISTEN_CLIENT_URLS" and url.startswith(
                    "http://127.0.0.1:") and spec.etcd.plaintext_localhost):
                found.append(Finding(path, f"{key} has plaintext {url}"))


def _check_unit(path: str, text: str, options: Mapping[str, str], found: list[Finding]) -> None:
    exec_lines = [line.split("=", 1)[1] for line in text.splitlines() if line.startswith("ExecStart=")]
    for token in " ".join(exec_lines).split():
        if token.startswith("--"):
            name = etcd.variable(token.split("=", 1)[0])
            if name in options:
                found.append(Finding(path, f"{token.split('=', 1)[0]} is also set as {name} in "
                                     "options.env; etcd refuses to start"))
    if f"EnvironmentFile={PATHS.options}" not in text.splitlines():
        found.append(Finding(path, f"does not read {PATHS.options}"))


def _check_user_data(name: str, user_data: bytes, found: list[Finding]) -> None:
    try:
        document: Any = yaml.safe_load(user_data)
    except yaml.YAMLError:
        found.append(Finding(f"{name}/user-data", "is not valid YAML"))
        return
    if not user_data.startswith(b"#cloud-config\n") or not isinstance(document, dict):
        found.append(Finding(f"{name}/user-data", "is not a #cloud-config mapping"))
        return
    for entry in document.get("write_files", []):
        if entry.get("owner", "").startswith("etcd") and entry.get("defer") is not True:
            found.append(Finding(f"{name}/user-data", f"{entry.get('path')} is owned by etcd "
                                 "but not deferred; cloud-init writes it before the user exists"))
        if entry.get("path") == PATHS.key and entry.get("permissions") != "0600":
            found.append(Finding(f"{name}/user-data", f"{PATHS.key} must be 0600"))


def _load_key(files: Mapping[str, bytes], path: str, found: list[Finding]) -> PrivateKey | None:
    if path not in files:
        return None
    try:
        key = serialization.load_pem_private_key(files[path], password=None)
    except (ValueError, TypeError):
        found.append(Finding(path, "is not an unencrypted PEM key"))
        return None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        found.append(Finding(path, "is not an RSA or ECDSA key"))
        return None
    return key
