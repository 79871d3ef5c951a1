"""Host keys: each node's SSH ed25519 host key, made by the build and kept, and the known_hosts that names them.

cloud-init writes a new host key on every new instance-id unless the seed carries one
(cc_ssh: `ssh_keys` replaces what `ssh_deletekeys` removed), so a key made here once
keeps an operator's known_hosts valid across every re-seed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from .errors import MaterialError
from .layout import PKI, host_key_name, key_file
from .pki import Change, KeyRecords, PkiEvent
from .spec import Spec


@dataclass(frozen=True)
class HostKey:
    """A node's host key: the private key file as written (OpenSSH format), its public line, and the sha256
    of its DER SubjectPublicKeyInfo, as manifest.json records every key."""

    private_pem: bytes
    public_line: str  # "ssh-ed25519 AAAA..."
    public_sha256: str

    @classmethod
    def from_pem(cls, private_pem: bytes) -> HostKey:
        """Read a host key file.

        Raises:
            ValueError: not an unencrypted OpenSSH key, or not ed25519 (the message says which).
        """
        try:
            key = serialization.load_ssh_private_key(private_pem, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise ValueError("not an unencrypted OpenSSH private key") from None
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise ValueError("not an ed25519 key")
        return cls._of(key, private_pem)

    @classmethod
    def _of(cls, key: ed25519.Ed25519PrivateKey, private_pem: bytes) -> HostKey:
        public = key.public_key()
        der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        line = public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
        return cls(private_pem, line, hashlib.sha256(der).hexdigest())


def host_keys(spec: Spec, existing: Mapping[str, bytes], records: KeyRecords, renew: frozenset[str],
              events: list[PkiEvent]) -> dict[str, HostKey]:
    """Each node's host key: the one in the keys directory when it is the recorded one, else a new one.

    `renew`: nodes that get a new host key (a replaced machine's old key counts as exposed).

    Raises:
        MaterialError: a key is unreadable, not ed25519, not the recorded one, or missing while recorded.
    """
    keys, problems = {}, []
    for node in spec.nodes:
        name = host_key_name(node.name)
        source = key_file(name)
        pem = existing.get(f"{name}.key")
        if pem is None or node.name in renew:
            if pem is None and name in records.recorded:
                problems.append(f"{source}: missing, but manifest.json records it; refusing to give "
                                f"{node.name} a new host key silently (known_hosts would break)")
                continue
            keys[node.name] = _new()
            events.append(PkiEvent(name, Change.CREATED if pem is None else Change.NEW_KEY,
                                   "ssh host key" + ("" if pem is None else ", replace")))
            continue
        try:
            host = HostKey.from_pem(pem)
        except ValueError as exc:
            problems.append(f"{source}: {exc}; refusing to replace it")
            continue
        want = records.recorded.get(name) or records.pending.get(name)
        if want is None or want != host.public_sha256:
            problems.append(f"{source}: {'not recorded in' if want is None else 'differs from the key'} "
                            "manifest.json; refusing to use a host key this tool did not write")
            continue
        keys[node.name] = host
    if problems:
        raise MaterialError(problems, hint=f"restore {PKI}/ from the cluster's repository (unseal)")
    return keys


def known_hosts(spec: Spec, public_lines: Mapping[str, str]) -> str:
    """known_hosts lines for every node: its name, FQDN and IP, then its host key's public line
    (sshd(8) SSH_KNOWN_HOSTS FILE FORMAT)."""
    lines = [f"# Host keys of etcd cluster {spec.name}. Generated: do not edit. Use with\n"
             f"#   ssh -o UserKnownHostsFile=known_hosts -o StrictHostKeyChecking=yes <node>\n"]
    lines += [f"{node.name},{node.fqdn},{node.ip} {public_lines[node.name]}\n" for node in spec.nodes]
    return "".join(lines)


def _new() -> HostKey:
    key = ed25519.Ed25519PrivateKey.generate()
    return HostKey._of(key, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                              serialization.NoEncryption()))
