"""A stand-in for systemctl, for running the generated install script in a scratch root.

PID 1 here is not systemd, so the script's systemctl calls cannot reach a real
service manager. This stand-in does what systemd would do with the units the
script installed under the scratch root: for etcd.service it mounts the fstab entry of each
RequiresMountsFor= path (and starts nothing when it cannot), runs each
ExecStartPre=, then reads every EnvironmentFile= (a leading '-' makes one
optional) with systemd's own parser (libsystemd-shared, see tests/helpers/parsers.py),
later files overriding earlier ones, and runs the real etcd binary in the caller's
network namespace. A oneshot unit (etcd-backup.service, etcd-defrag.service) runs to its end; `start
--no-block` of etcd-seed-promote.service runs it in the background; as systemd, such a unit is active while
its run goes on, and a start then does nothing. File paths
in the settings are moved under the scratch root, the only change to what the
script wrote. enable and disable are remembered for is-enabled. Every call is logged, so a test can
count starts, restarts and enables.

usage (as systemctl): start|stop|restart|is-active|enable|disable|is-enabled|daemon-reload
                      [--no-block|--quiet|--now] UNIT...
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.helpers.parsers import systemd_env

PATH_KEYS = ("ETCD_DATA_DIR", "ETCD_WAL_DIR", "ETCD_CERT_FILE", "ETCD_KEY_FILE", "ETCD_TRUSTED_CA_FILE",
             "ETCD_PEER_CERT_FILE", "ETCD_PEER_KEY_FILE", "ETCD_PEER_TRUSTED_CA_FILE", "ETCD_CLIENT_CRL_FILE",
             "ETCD_PEER_CRL_FILE")
UNITS = "etc/systemd/system"


def _pid(state: Path, unit: str = "etcd") -> int | None:
    try:
        pid = int((state / f"{unit}.pid").read_text())
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


def _directives(root: Path, unit: str, key: str) -> list[str]:
    path = root / UNITS / unit
    lines = path.read_text().splitlines() if path.exists() else []
    return [line.split("=", 1)[1] for line in lines if line.startswith(f"{key}=")]


def _under(root: Path, command: str) -> list[str]:
    program, *args = command.split()
    return [f"{root}{program}", *args]


def _run_unit(root: Path, state: Path) -> None:
    """What systemd does for etcd.service: ExecStartPre=, then ExecStart= with the EnvironmentFile= settings."""
    script_env = {**os.environ, "ETCD_SEED_ROOT": str(root)}
    for command in _directives(root, "etcd.service", "ExecStartPre"):
        if subprocess.run(_under(root, command), env=script_env, check=False).returncode != 0:
            os._exit(1)
    env: dict[str, str] = {}
    for name in _directives(root, "etcd.service", "EnvironmentFile"):
        optional, name = name.startswith("-"), name.lstrip("-")
        path = Path(f"{root}{name}")
        if optional and not path.exists():
            continue
        env.update(systemd_env(path))
    env = {k: (f"{root}{v}" if k in PATH_KEYS else v) for k, v in env.items()}
    os.execve(str(root / "usr/local/bin/etcd"), [str(root / "usr/local/bin/etcd")], env)  # noqa: S606 - keeps the PID


def _mounts_for(root: Path, state: Path) -> bool:
    """What systemd does for RequiresMountsFor=: mount each path's /etc/fstab entry first (here, in the caller's
    mount namespace, which etcd then inherits), and leave the unit unstarted when one cannot be mounted."""
    fstab = root / "etc/fstab"
    entries = [line.split() for line in (fstab.read_text().splitlines() if fstab.exists() else [])
               if line.strip() and not line.startswith("#")]
    for directive in _directives(root, "etcd.service", "RequiresMountsFor"):
        for path in directive.split():
            entry = max((e for e in entries if path == e[1] or path.startswith(e[1].rstrip("/") + "/")),
                        key=lambda e: len(e[1]), default=None)
            if entry is None:
                continue  # on the root filesystem
            where = Path(f"{root}{entry[1]}")
            if subprocess.run(["mountpoint", "-q", str(where)], check=False).returncode == 0:
                continue
            where.mkdir(parents=True, exist_ok=True)
            if not Path(f"{root}{entry[0]}").exists() or subprocess.run(
                    ["mount", "-t", entry[2], f"{root}{entry[0]}", str(where)], check=False).returncode != 0:
                with open(state / "etcd.log", "a") as log:
                    log.write(f"shim: dependency failed: cannot mount {entry[0]} at {entry[1]} for {path}\n")
                return False
    return True


def _start(root: Path, state: Path) -> int:
    if not _mounts_for(root, state):
        return 1  # systemd: "Dependency failed for etcd.service"
    log = open(state / "etcd.log", "ab")  # noqa: SIM115 - handed to the daemon
    proc = subprocess.Popen([sys.executable, __file__, "--run-etcd"], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, env={**os.environ, "ETCD_SEED_ROOT": str(root)})
    (state / "etcd.pid").write_text(str(proc.pid))
    return 0


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


def _oneshot(root: Path, state: Path, unit: str, wait: bool) -> int:
    env = {**os.environ, "ETCD_SEED_ROOT": str(root)}
    commands = _directives(root, unit, "ExecStart")
    with open(state / f"{unit}.log", "ab") as log:
        if not wait:
            proc = subprocess.Popen(_under(root, commands[0]), env=env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            (state / f"{unit}.pid").write_text(str(proc.pid))
            return 0
        return subprocess.run(_under(root, commands[0]), env=env, stdout=log, stderr=subprocess.STDOUT,
                              check=False).returncode


def _enablement(state: Path, verb: str, units: list[str]) -> int:
    """enable and disable keep a set of unit names; is-enabled prints each one's state as systemctl does,
    and succeeds when at least one is enabled."""
    record = state / "enabled"
    enabled = set(record.read_text().split()) if record.exists() else set()
    if verb == "is-enabled":
        print("\n".join("enabled" if u in enabled else "disabled" for u in units))
        return 0 if enabled & set(units) else 1
    enabled = enabled | set(units) if verb == "enable" else enabled - set(units)
    record.write_text("".join(f"{u}\n" for u in sorted(enabled)))
    return 0


def main(argv: list[str]) -> int:
    root = Path(os.environ["ETCD_SEED_ROOT"])
    state = root / "run" / "shim"
    if argv == ["--run-etcd"]:
        _run_unit(root, state)
    state.mkdir(parents=True, exist_ok=True)
    words = [a for a in argv if not a.startswith("--")]
    with open(state / "calls.log", "a") as log:
        log.write(" ".join(words) + "\n")
    verb, unit = words[0], (words[1] if len(words) > 1 else "")
    if verb in ("enable", "disable", "is-enabled"):
        return _enablement(state, verb, words[1:])
    if unit in ("etcd-backup.service", "etcd-defrag.service", "etcd-seed-promote.service", "etcd-seed-auth.service",
                "etcd-seed-report.service"):
        if verb == "is-active":  # as systemd: active while its run goes on
            return 0 if _pid(state, unit) is not None else 3
        if verb == "start" and _pid(state, unit) is None:
            return _oneshot(root, state, unit, wait="--no-block" not in argv)
        return 0
    if unit != "etcd.service":
        return 0  # timers, the flannel unit and daemon-reload: recorded only
    if verb == "is-active":
        return 0 if _pid(state) is not None else 3
    if verb == "start" and _pid(state) is None:
        return _start(root, state)
    if verb == "restart":
        _stop(state)
        return _start(root, state)
    if verb == "stop":
        _stop(state)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
