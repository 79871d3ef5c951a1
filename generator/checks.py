"""Checks: whether one value of cluster.yaml is well-formed, each returning what is wrong with it or None.

The field table (fields.py) names the check of each key; the loader runs it. Every pattern is used with
fullmatch (`$` would also accept a trailing newline), and a value that passes reaches YAML, shell, systemd
and env files without escaping.
"""

from __future__ import annotations

import ipaddress
import re

from .layout import HEX64, RESERVED_NAMES, pki_path
from .paths import PATHS
from .spec import Backup

_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# RFC 3986 characters only: no space, quote, backslash, backtick or control character.
_URL = re.compile(r"https?://[A-Za-z0-9][A-Za-z0-9.-]*(:[0-9]{1,5})?(/[A-Za-z0-9\-._~!$&'()*+,;=:@%/?]*)?")
_SHA512_CRYPT = re.compile(r"\$6\$(rounds=[0-9]{1,9}\$)?[./0-9A-Za-z]{1,16}\$[./0-9A-Za-z]{86}")
# The CA's CN is "<cluster> etcd CA", and X.509 caps a CN at 64 characters (RFC 5280 ub-common-name).
MAX_CLUSTER_NAME = 64 - len(" etcd CA")
# A subset of systemd.time(7) calendar events, so that the build refuses what systemd would:
# a shorthand such as daily, or [weekdays] [date] time, each part *, numbers, a..b ranges, lists, /steps.
_CAL_SHORT = ("minutely", "hourly", "daily", "weekly", "monthly", "quarterly", "semiannually", "yearly",
              "annually")
_CAL_NUM = r"(\*|[0-9]{1,4}(\.\.[0-9]{1,4})?)(/[0-9]{1,4})?"
_CAL_PART = rf"{_CAL_NUM}(,{_CAL_NUM})*"
_CAL_DAY = r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun)"
_CALENDAR = re.compile(rf"({_CAL_DAY}((\.\.|,){_CAL_DAY})* )?({_CAL_PART}-{_CAL_PART}-{_CAL_PART} )?"
                       rf"{_CAL_PART}:{_CAL_PART}(:{_CAL_PART})?")
# defrag.schedule: the first node's time of day, on some weekdays or on every day.
_DEFRAG_SCHEDULE = re.compile(rf"({_CAL_DAY}((\.\.|,){_CAL_DAY})* )?([01][0-9]|2[0-3]):[0-5][0-9]")
# etcd.data_device: a whole disk by a stable name, or a kernel name. Printable, no space or quote: the install
# script and /etc/fstab carry it.
_DATA_DEVICE = re.compile(r"/dev/(disk/by-(id|path|uuid|label|partuuid|partlabel)/[A-Za-z0-9:._+@-]{1,128}"
                          r"|(vd|sd|xvd|hd)[a-z]{1,2}|nvme[0-9]{1,2}n[0-9]{1,2})")
_ABS_PATH = re.compile(r"(/[A-Za-z0-9._-]+)+")
# An X.509 CN or O of a client certificate: printable ASCII that needs no escaping anywhere it is shown.
_DN_VALUE = re.compile(r"[A-Za-z0-9][A-Za-z0-9 :._@-]{0,63}")
# Backups hold the whole keyspace: never where any user can write (or swap the files), and never where
# the etcd user can never write, so that the unit would fail on every run.
_BACKUP_UNSAFE = (("/var/tmp", "which every user can write"),  # noqa: S108 - a path refused, not used
                  ("/var/lock", "which every user can write"),
                  ("/var/log", "which the etcd user cannot write"), ("/root", "which the etcd user cannot write"),
                  ("/home", "where the etcd user cannot write"))
_SYSTEM_TOP_DIRS = frozenset({"bin", "boot", "dev", "etc", "lib", "lib32", "lib64", "libx32", "proc", "run",
                              "sbin", "sys", "tmp", "usr"})


def label(value: str) -> str | None:
    if not _LABEL.fullmatch(value):
        return (f"{value!r} is not a valid name: use 1-63 lowercase letters, digits and '-', "
                "starting and ending with a letter or digit")
    return None


def cluster_name(value: str) -> str | None:
    if len(value) > MAX_CLUSTER_NAME:
        return f"is {len(value)} characters; at most {MAX_CLUSTER_NAME} fit the CA's common name"
    return label(value)


def node_name(value: str) -> str | None:
    if value in RESERVED_NAMES:
        return (f"'{value}' is reserved: the build writes {pki_path(value)}.* or {value}/ for itself; "
                "choose another node name")
    return label(value)


def domain(value: str) -> str | None:
    labels = value.removesuffix(".").split(".")
    if len(value) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        return f"{value!r} is not a valid DNS name"
    return None


def token(value: str) -> str | None:
    if not _TOKEN.fullmatch(value):
        return (f"{value!r} is not a valid token: use 1-128 letters, digits, '.', '_' and '-', "
                "starting with a letter or digit")
    return None


def url(value: str) -> str | None:
    if not _URL.fullmatch(value):
        return (f"{value!r} is not an http(s) URL of plain characters (letters, digits and "
                "-._~!$&'()*+,;=:@%/?; no spaces, quotes or control characters)")
    return None


def sha256(value: str) -> str | None:
    return None if HEX64.fullmatch(value) else "must be 64 lowercase hex digits"


def fqdn(value: str) -> str | None:
    problem = domain(value)
    if problem is None and "." not in value.removesuffix("."):
        return f"{value!r} is not fully qualified (it has no domain)"
    return problem


def is_host(value: str) -> bool:
    """An IPv4 address, or a DNS name whose last label is not all digits (not a mistyped address)."""
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        return domain(value) is None and not value.removesuffix(".").rsplit(".", 1)[-1].isdigit()
    return True


def data_device(value: str) -> str | None:
    if not _DATA_DEVICE.fullmatch(value) or "/../" in value or value.endswith(("/.", "/..")):
        return (f"{value!r} is not a block device path this tool accepts: /dev/disk/by-id/<id> (stable across "
                "reboots), /dev/disk/by-path/..., /dev/vdb, /dev/sdb or /dev/nvme1n1")
    return None


def dn_value(value: str) -> str | None:
    if not _DN_VALUE.fullmatch(value):
        return (f"{value!r} is not a name this tool puts in a certificate: 1-64 letters, digits, spaces and "
                "':._@-', starting with a letter or digit")
    return None


def plain_path(value: str) -> str | None:
    """An absolute path of plain characters, with no . or .. part: safe unquoted in every file it reaches."""
    path = value.rstrip("/")
    if not _ABS_PATH.fullmatch(path) or any(part in (".", "..") for part in path.split("/")):
        return f"{value!r} is not an absolute path of plain characters (letters, digits, '.', '_', '-')"
    return None


def defrag_schedule(value: str) -> str | None:
    if not _DEFRAG_SCHEDULE.fullmatch(value):
        return (f"{value!r} is not [weekdays] HH:MM, such as '03:30' or 'Sun 03:30' or 'Mon..Fri 01:00' "
                "(the first node's time; each next node starts defrag.stagger_minutes later)")
    return None


def calendar(value: str) -> str | None:
    if value not in _CAL_SHORT and (len(value) > 64 or not _CALENDAR.fullmatch(value) or _calendar_out_of_range(value)):
        return (f"{value!r} is not a calendar event this tool accepts: {', '.join(_CAL_SHORT[:5])}, ... or "
                "[weekdays] [year-month-day] hour:minute[:second], such as 'Mon..Fri *-*-* 02:30' "
                "(systemd.time(7))")
    return None


def _calendar_out_of_range(value: str) -> bool:
    """Whether a number of a calendar event lies outside its field (month 1-12, hour 0-23 ...)."""
    words = value.split(" ")
    date = words[-2].split("-") if len(words) > 1 and "-" in words[-2] else ["*", "*", "*"]
    time = words[-1].split(":")
    limits = [(1970, 2199), (1, 12), (1, 31), (0, 23), (0, 59), (0, 59)]
    fields = date + time + ["*"] * (3 - len(time))
    for field, (low, high) in zip(fields, limits, strict=True):
        for item in field.split(","):
            base, _, step = item.partition("/")
            if step and int(step) == 0:
                return True
            if base != "*" and not all(low <= int(n) <= high for n in base.split("..")):
                return True
    return False


def backup_dir(value: str) -> str | None:
    path = value.rstrip("/")
    problem = plain_path(value)
    if problem:
        return problem
    parts = path.strip("/").split("/")
    if len(parts) < 2 or parts[0] in _SYSTEM_TOP_DIRS:
        return (f"{value!r} is a system directory or lies in one; use a directory of its own such as "
                f"{Backup.dir} (the install step creates it for etcd only when it is missing)")
    for unsafe, why in _BACKUP_UNSAFE:
        if path == unsafe or path.startswith(unsafe + "/"):
            return f"{value!r} lies in {unsafe}, {why}; use a directory of its own such as {Backup.dir}"
    taken = (PATHS.home, PATHS.ssl, "/etc/etcd", PATHS.staged)
    for other in taken:
        if path == other or path.startswith(other + "/") or other.startswith(path + "/"):
            return f"{value!r} overlaps {other}, which the install step manages; choose a directory of its own"
    return None


def password_hash(value: str) -> str | None:
    if not _SHA512_CRYPT.fullmatch(value):
        return ("is not a SHA-512 crypt hash ($6$...); make one with "
                "'python -m generator hash-password'")
    return None
