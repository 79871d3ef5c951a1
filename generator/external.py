"""External tools: age, cloud-init and git, each run as a subprocess with a fixed argument list."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from .errors import MaterialError


def _age() -> str:
    tool = shutil.which("age")
    if tool is None:
        raise MaterialError("age is not installed", hint="apt-get install age")
    return tool


def age_encrypt(data: bytes, recipients: Sequence[str], source: str) -> bytes:
    """Encrypt to every recipient, ASCII-armored."""
    args = [_age(), "--encrypt", "--armor"]
    for recipient in sorted(recipients):
        args += ["--recipient", recipient]
    done = subprocess.run(args, input=data, capture_output=True, check=False)
    if done.returncode != 0:
        raise MaterialError(f"{source}: age could not encrypt it: {done.stderr.decode(errors='replace').strip()}")
    return done.stdout


def age_decrypt(sealed: bytes, identity: Path, source: str) -> bytes:
    """Decrypt with an age identity file."""
    done = subprocess.run([_age(), "--decrypt", "--identity", str(identity)], input=sealed,
                          capture_output=True, check=False)
    if done.returncode != 0:
        raise MaterialError(f"{source}: age could not decrypt it: {done.stderr.decode(errors='replace').strip()}")
    return done.stdout


# Run by cloud-init's own Python: validates every file given in one process, with the schema
# loaded once, instead of one `cloud-init schema` process (about 0.4 s) per node.
_SCHEMA_BATCH = """
import json, sys
from cloudinit.config.schema import get_schema, validate_cloudconfig_file
schema = get_schema()
results = {}
for path in sys.argv[1:]:
    try:
        validate_cloudconfig_file(path, schema)
        results[path] = None
    except Exception as exc:  # SchemaValidationError, or a file it cannot read
        results[path] = str(exc) or type(exc).__name__
print(json.dumps(results))
"""


def cloud_init_schema(paths: Sequence[Path]) -> dict[Path, str | None]:
    """What Debian's cloud-init schema says is wrong with each user-data file (None: nothing).

    Every file is None when cloud-init is not installed: the check is then skipped.
    """
    tool = shutil.which("cloud-init")
    if tool is None or not paths:
        return dict.fromkeys(paths)
    with open(tool, "rb") as handle:
        shebang = handle.readline().decode(errors="replace")
    python = shebang[2:].strip().split()[0] if shebang.startswith("#!") else ""
    if python and os.access(python, os.X_OK):
        done = subprocess.run([python, "-c", _SCHEMA_BATCH, *map(str, paths)], capture_output=True, text=True,
                              check=False)
        try:
            found = json.loads(done.stdout)
            return {p: (f"cloud-init schema: {found[str(p)]}" if found[str(p)] else None) for p in paths}
        except (ValueError, KeyError, TypeError):
            pass  # another cloud-init layout: ask the command, one file at a time
    return {p: _schema_command(tool, p) for p in paths}


def _schema_command(tool: str, path: Path) -> str | None:
    result = subprocess.run([tool, "schema", "-c", str(path)], capture_output=True, text=True, check=False)
    if result.returncode == 0:
        return None
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    return "cloud-init schema: " + ("; ".join(lines[-3:]) or f"exit {result.returncode}")


def git_tracked(root: Path) -> list[str] | None:
    """Paths under root that git's index holds, relative to root; None outside a work tree or without git."""
    tool = shutil.which("git")
    if tool is None or not root.is_dir():
        return None
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    inside = subprocess.run([tool, "-C", str(root), "rev-parse", "--is-inside-work-tree"], capture_output=True,
                            text=True, check=False, env=env)
    if inside.returncode != 0 or inside.stdout.strip() != "true":
        return None
    listed = subprocess.run([tool, "-C", str(root), "ls-files", "-z", "--cached", "--", "."],
                            capture_output=True, check=False, env=env)
    if listed.returncode != 0:
        return None
    return [p for p in listed.stdout.decode(errors="replace").split("\0") if p]
