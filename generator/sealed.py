"""Sealed state: private keys encrypted with age, so a team can commit everything and rebuild anywhere."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .errors import MaterialError
from .fs import PUBLIC_MODE, SECRET_MODE, read_optional, write_file

INDEX = "sealed.json"  # in pki/: which key each .age file holds, and for whom it was sealed
_RECIPIENT = re.compile(r"^age1[0-9a-z]{58}$")


@dataclass(frozen=True)
class SealResult:
    sealed: list[str]
    unchanged: list[str]


def _age() -> str:
    tool = shutil.which("age")
    if tool is None:
        raise MaterialError("age is not installed", hint="apt-get install age")
    return tool


def seal(pki_dir: Path, recipients: list[str]) -> SealResult:
    """Encrypt every private key in pki_dir to `recipients`, as <name>.key.age.

    age output differs on every run, so a key is sealed again only when the key
    or the recipients changed: committed .age files stay put otherwise.

    Raises:
        MaterialError: a recipient is not an age public key, or age failed.
    """
    bad = [r for r in recipients if not _RECIPIENT.match(r)]
    if bad or not recipients:
        raise MaterialError(f"--recipient: {bad[0] if bad else 'none given'} is not an age public key (age1...)")
    index = _read_index(pki_dir)
    result = SealResult([], [])
    for key in sorted(pki_dir.glob("*.key")):
        data = key.read_bytes()
        want: dict[str, object] = {"key_sha256": hashlib.sha256(data).hexdigest(),
                                   "recipients": sorted(recipients)}
        target = key.with_name(key.name + ".age")
        if index.get(key.name) == want and target.exists():
            result.unchanged.append(target.name)
            continue
        args = [_age(), "--encrypt", "--armor"]
        for recipient in sorted(recipients):
            args += ["--recipient", recipient]
        done = subprocess.run(args, input=data, capture_output=True, check=False)
        if done.returncode != 0:
            raise MaterialError(f"{key}: age could not encrypt it: {done.stderr.decode().strip()}")
        write_file(target, done.stdout, PUBLIC_MODE)
        index[key.name] = want
        result.sealed.append(target.name)
    write_file(pki_dir / INDEX, (json.dumps(index, indent=2, sort_keys=True) + "\n").encode(), PUBLIC_MODE)
    return result


def unseal(pki_dir: Path, identity: Path) -> list[str]:
    """Decrypt every <name>.key.age in pki_dir with an age identity file, as <name>.key (0600).

    Raises:
        MaterialError: decryption failed, the result is not the key that was sealed,
            or a different key is already there (it is never replaced).
    """
    index = _read_index(pki_dir)
    restored = []
    for sealed in sorted(pki_dir.glob("*.key.age")):
        done = subprocess.run([_age(), "--decrypt", "--identity", str(identity), str(sealed)],
                              capture_output=True, check=False)
        if done.returncode != 0:
            raise MaterialError(f"{sealed}: age could not decrypt it: {done.stderr.decode().strip()}")
        name = sealed.name.removesuffix(".age")
        recorded = index.get(name, {}).get("key_sha256")
        if recorded is not None and hashlib.sha256(done.stdout).hexdigest() != recorded:
            raise MaterialError(f"{sealed}: decrypts to a key other than the one {INDEX} records")
        existing = read_optional(pki_dir / name)
        if existing is not None and existing != done.stdout:
            raise MaterialError(f"{pki_dir / name}: exists and differs from {sealed.name}; refusing to replace it")
        if write_file(pki_dir / name, done.stdout, SECRET_MODE):
            restored.append(name)
    return restored


def _read_index(pki_dir: Path) -> dict[str, dict[str, object]]:
    data = read_optional(pki_dir / INDEX)
    if data is None:
        return {}
    try:
        index = json.loads(data)
    except ValueError:
        raise MaterialError(f"{pki_dir / INDEX}: not valid JSON") from None
    return index if isinstance(index, dict) else {}
