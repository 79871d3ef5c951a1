"""A stand-in for systemctl, for running the generated install script in a scratch root.

PID 1 here is not systemd, so the script's systemctl calls cannot reach a real
service manager. This stand-in does what systemd would do with etcd.service: it
reads the EnvironmentFile with systemd's own parser (libsystemd-shared, see
tests/parsers.py) and runs the real etcd binary the script installed, in the
caller's network namespace. File paths in the settings are moved under the scratch
root, the only change to what the script wrote. Every call is logged, so a test
can count starts and restarts.

usage (as systemctl): start|restart|is-active|enable|daemon-reload [--no-block|--quiet] UNIT
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.parsers import systemd_env

PATH_KEYS = ("ETCD_DATA_DIR", "ETCD_WAL_DIR", "ETCD_CERT_FILE", "ETCD_KEY_FILE", "ETCD_TRUSTED_CA_FILE",
             "ETCD_PEER_CERT_FILE", "ETCD_PEER_KEY_FILE", "ETCD_PEER_TRUSTED_CA_FILE")


def _pid(state: Path) -> int | None:
    try:
        pid = int((state / "etcd.pid").read_text())
    except (FileNotFoundError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    with open(f"/proc/{pid}/stat") as handle:
        if handle.read().split()[2] == "Z":
            return None
    return pid


def _start(root: Path, state: Path) -> None:
    env = systemd_env(root / "etc/etcd/options.env")
    env = {k: (f"{root}{v}" if k in PATH_KEYS else v) for k, v in env.items()}
    log = open(state / "etcd.log", "ab")  # noqa: SIM115 - handed to the daemon
    proc = subprocess.Popen([str(root / "usr/local/bin/etcd")], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    (state / "etcd.pid").write_text(str(proc.pid))


def _stop(state: Path) -> None:
    pid = _pid(state)
    if pid is None:
        return
    os.kill(pid, signal.SIGTERM)
    for _ in range(200):
        if _pid(state) is None:
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)


def main(argv: list[str]) -> int:
    root = Path(os.environ["ETCD_SEED_ROOT"])
    state = root / "run" / "shim"
    state.mkdir(parents=True, exist_ok=True)
    words = [a for a in argv if not a.startswith("--")]
    with open(state / "calls.log", "a") as log:
        log.write(" ".join(words) + "\n")
    verb, unit = words[0], (words[1] if len(words) > 1 else "")
    if unit != "etcd.service":
        return 0  # the flannel unit and daemon-reload: recorded only
    if verb == "is-active":
        return 0 if _pid(state) is not None else 3
    if verb == "start" and _pid(state) is None:
        _start(root, state)
    elif verb == "restart":
        _stop(state)
        _start(root, state)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
