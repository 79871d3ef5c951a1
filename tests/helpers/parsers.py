"""The real parsers of each output language, for tests: systemd's env-file parser, sh, and cloud-init's YAML loader."""

from __future__ import annotations

import ctypes
import glob
import json
import os
import subprocess
from pathlib import Path

# systemd's own EnvironmentFile parser, load_env_file(), is exported by libsystemd-shared
# (src/basic/env-file.c); PID 1 here is not systemd, so no transient unit can read the file.
_SHARED = sorted(glob.glob("/usr/lib/*/systemd/libsystemd-shared-*.so")
                 + glob.glob("/lib/*/systemd/libsystemd-shared-*.so"))
SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's python3, where the cloud-init package lives


def systemd_available() -> str | None:
    """None when systemd's env-file parser can be loaded, else why not."""
    return None if _SHARED else "libsystemd-shared (Debian's systemd package) is not installed"


def systemd_env(path: Path) -> dict[str, str]:
    """The variables systemd sets from an EnvironmentFile, exactly as its parser reads them."""
    lib = ctypes.CDLL(_SHARED[-1])
    lib.load_env_file.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.POINTER(ctypes.c_char_p))]
    result = ctypes.POINTER(ctypes.c_char_p)()
    code = lib.load_env_file(None, str(path).encode(), ctypes.byref(result))
    if code < 0:
        raise OSError(-code, f"systemd could not parse {path}")
    values: dict[str, str] = {}
    i = 0
    while result and result[i] is not None:
        entry = result[i].decode()
        key, _, value = entry.partition("=")
        values[key] = value
        i += 1
    return values


def sh_env(path: Path) -> dict[str, str]:
    """The variables `sh` sets when it sources a file with `set -a` (as `. ./etcdctl.env` is used)."""
    done = subprocess.run(["env", "-i", "sh", "-c", 'set -a; . "$1"; set +a; env -0', "sh", str(path)],
                          capture_output=True, check=True)
    values = dict(item.split("=", 1) for item in done.stdout.decode().split("\0") if "=" in item)
    for noise in ("PWD", "SHLVL", "_", "OLDPWD"):
        values.pop(noise, None)
    return values


def cloud_init_available() -> str | None:
    if not os.path.exists(SYSTEM_PYTHON):
        return "no system python3"
    done = subprocess.run([SYSTEM_PYTHON, "-c", "import cloudinit.util"], capture_output=True, check=False)
    return None if done.returncode == 0 else "cloud-init's Python modules are not installed (make test installs them)"


def cloud_init_load(texts: list[str]) -> list[object]:
    """Each text as cloud-init's own loader (cloudinit.util.load_yaml) reads it, in one process."""
    script = ("import json, sys\nfrom cloudinit import util\n"
              "docs = json.load(sys.stdin)\n"
              "json.dump([util.load_yaml(d, default='<<refused>>', allowed=(dict, list, str, int, float, bool,"
              " type(None))) for d in docs], sys.stdout, default=str)\n")
    done = subprocess.run([SYSTEM_PYTHON, "-c", script], input=json.dumps(texts), capture_output=True,
                          text=True, check=True)
    loaded: list[object] = json.loads(done.stdout)
    return loaded
