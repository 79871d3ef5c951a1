"""Status: what the running cluster says of itself, set against what the build in output/ issued.

Read-only, from the operator's machine with the admin certificate, and with the standard library only.
etcd's gRPC gateway (/v3/...) will not do: etcd 3.5 refuses every gateway call made with a client
certificate that has a CN ("CommonName of client sending a request against gateway will be ignored"),
and every certificate this tool issues has one. What does answer over mutual TLS is asked instead:
the certificate each port serves, /metrics, /health and /version on 2379, and /members on 2380
(the peer endpoint a joining member reads). https://etcd.io/docs/v3.5/op-guide/monitoring/

Which seed a node runs is read over gRPC (generator/kvread.py): each node's etcd-seed-report.service puts the
instance-id of the seed its install step applied under /etcd-seed/seed/<node>, with the node's own certificate,
once etcd runs it; status reads it from that node's etcd with the admin certificate.

Every answer is checked for etcd's shape before it is used, and one deadline bounds each node as a whole:
a member that lies (NaN metrics, odd JSON, a broken HTTP/2 frame) or stalls (a byte at a time) becomes a
problem naming it.

A node is in step with the build only when its record names the seed the build made for it (the instance-id
in the tree's meta-data), both ports serve the certificate the build issued it, and it runs the build's etcd
version and quota. It is behind when any of those says otherwise, and unknown (never in step) when it
answers but its record cannot be read: a seed older than the record, a report not yet written, no quorum.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import http.client
import json
import math
import re
import socket
import ssl
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from cryptography import x509

from . import fs, journal, kvread, layout, rotation
from .certs import cert_fingerprint
from .errors import MaterialError, OutputError, printable
from .etcd import CLIENT_PORT, PEER_PORT
from .inputs import cluster_root, read_manifest, read_spec
from .node import seed_key
from .spec import Node, Spec

TIMEOUT_S = 5.0
_SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="([^"\\]*)"')
MAX_BODY = 4 << 20  # /metrics of a member is about 200 KiB


@dataclass(frozen=True)
class Answer:
    """What one node said, or why it said nothing (`error`). Filled in by `ask`, read by `assess`."""

    node: str
    error: str | None = None
    client_cert: bytes | None = None  # DER, as served on 2379
    peer_cert: bytes | None = None  # DER, as served on 2380
    metrics: Mapping[str, list[tuple[dict[str, str], float]]] = field(default_factory=dict)
    health: Mapping[str, Any] = field(default_factory=dict)
    members: Sequence[Mapping[str, Any]] | None = None
    peer_error: str | None = None
    foreign: bool = False  # 2379 serves a certificate the trusted CAs do not vouch for: nothing it says is used
    seed: str | None = None  # the instance-id its record in etcd names: the seed it runs
    seed_error: str | None = None  # why there is no record to go by


@dataclass(frozen=True)
class Row:
    """One spec node as the cluster shows it."""

    node: str
    ip: str
    reachable: bool
    error: str | None = None
    version: str | None = None
    leader: bool = False
    learner: bool = False
    raft_lag: int | None = None  # entries applied behind the highest committed index any member reports
    db_size: int | None = None
    db_in_use: int | None = None
    quota: int | None = None
    alarms: str = ""
    client_cert: str = "unknown"  # current, older (this CA, not the build's), foreign
    peer_cert: str = "unknown"
    expires: str | None = None  # of the certificate served on 2379
    seed: str = "unknown"  # current (this build's), older (another's), unknown (no record to go by)
    in_step: bool = False
    state: str = "unknown"  # in step; behind (what it serves or its record says so); unknown (never in step)


@dataclass(frozen=True)
class Status:
    """The cluster's answer: a row per spec node, what holds for the whole, what to roll next and why not 0."""

    rows: list[Row]
    cluster_version: str | None
    rotation: str | None
    unknown_members: list[str]
    missing_members: list[str]
    next: str
    problems: list[str]

    @property
    def exit_code(self) -> int:
        return 1 if self.problems else 0

    def to_json(self) -> dict[str, Any]:
        return {"rows": [asdict(r) for r in self.rows], "cluster_version": self.cluster_version,
                "rotation": self.rotation, "unknown_members": self.unknown_members,
                "missing_members": self.missing_members, "next": self.next, "problems": self.problems,
                "healthy": not self.problems}


# The metrics assess reads; a member that gives any of them a value that is not a finite number is lying.
READ = ("etcd_server_proposals_committed_total", "etcd_server_proposals_applied_total",
        "etcd_mvcc_db_total_size_in_bytes", "etcd_server_quota_backend_bytes",
        "etcd_mvcc_db_total_size_in_use_in_bytes", "etcd_server_is_leader", "etcd_server_is_learner",
        "etcd_server_has_leader", "etcd_server_version", "etcd_cluster_version")
MAX_COUNT = float(1 << 63)  # counters and byte sizes beyond this are not etcd's


def parse_metrics(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Prometheus' text format: each sample's labels and value, by metric name. Lines that do not parse are
    skipped: a member may export metrics this tool does not read."""
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for line in text.splitlines():
        match = _SAMPLE.fullmatch(line.strip())
        if line.startswith("#") or not match:
            continue
        try:
            value = float(match.group(3))
        except ValueError:
            continue
        samples.setdefault(match.group(1), []).append((dict(_LABEL.findall(match.group(2) or "")), value))
    return samples


def _value(answer: Answer, name: str) -> float | None:
    samples = answer.metrics.get(name) or []
    return samples[0][1] if samples else None


def _label(answer: Answer, name: str, label: str) -> str | None:
    """The label of an info metric's set sample: etcd keeps a cluster version it has left, at 0."""
    samples = [labels for labels, value in answer.metrics.get(name) or [] if value == 1]
    return samples[0].get(label) if samples else None


def _cert_state(served: bytes | None, issued: str) -> str:
    if served is None:
        return "unknown"
    return "current" if hashlib.sha256(served).hexdigest() == issued else "older"


def assess(spec: Spec, issued: Mapping[str, str], seeds: Mapping[str, str], answers: Sequence[Answer],
           rotation_step: str | None) -> Status:
    """Set the answers against the spec, the certificates the build issued (node -> sha256 of its DER) and the
    seeds it made (node -> instance-id)."""
    committed = [v for a in answers if (v := _value(a, "etcd_server_proposals_committed_total")) is not None]
    rows, problems = [], []
    for node, answer in zip(spec.nodes, answers, strict=True):
        if answer.error is not None:
            rows.append(Row(node.name, str(node.ip), reachable=False, error=answer.error,
                            client_cert="foreign" if answer.foreign else "unknown"))
            problems.append(f"{node.name}: {answer.error}")
            continue
        applied = _value(answer, "etcd_server_proposals_applied_total")
        client = _cert_state(answer.client_cert, issued[node.name])
        peer = _cert_state(answer.peer_cert, issued[node.name])
        size, quota = (_value(answer, "etcd_mvcc_db_total_size_in_bytes"),
                       _value(answer, "etcd_server_quota_backend_bytes"))
        in_use = _value(answer, "etcd_mvcc_db_total_size_in_use_in_bytes")
        version = _label(answer, "etcd_server_version", "server_version")
        seed = "unknown" if answer.seed is None else "current" if answer.seed == seeds[node.name] else "older"
        expires = None
        if answer.client_cert is not None:
            expires = x509.load_der_x509_certificate(answer.client_cert).not_valid_after_utc.strftime("%Y-%m-%d")
        healthy = answer.health.get("health") == "true"
        reason = str(answer.health.get("reason") or "")
        row = Row(node.name, str(node.ip), reachable=True, error=answer.peer_error, version=version,
                  leader=_value(answer, "etcd_server_is_leader") == 1,
                  learner=_value(answer, "etcd_server_is_learner") == 1,
                  raft_lag=int(max(committed) - applied) if committed and applied is not None else None,
                  db_size=None if size is None else int(size), db_in_use=None if in_use is None else int(in_use),
                  quota=None if quota is None else int(quota), alarms=reason if "ALARM" in reason.upper() else "",
                  client_cert=client, peer_cert=peer, expires=expires, seed=seed,
                  in_step=(client == peer == seed == "current" and version == spec.etcd.version
                           and quota == spec.etcd.quota_backend_bytes))
        drift = _drift(spec, row)
        row = replace(row, state="in step" if row.in_step else "behind" if drift or seed == "older" else "unknown")
        rows.append(row)
        if answer.peer_error:
            problems.append(f"{node.name}: {answer.peer_error}")
        if not healthy:
            problems.append(f"{node.name}: not healthy ({reason or 'etcd /health says false'})")
        if _value(answer, "etcd_server_has_leader") != 1:
            problems.append(f"{node.name}: has no leader")
        if row.learner:
            problems.append(f"{node.name}: still a learner (not yet promoted to a voting member)")
        problems += [f"{node.name}: {why}" for why in drift]
        if version is None or quota is None:
            problems.append(f"{node.name}: shows no etcd version or quota in /metrics: cannot tell whether it runs "
                            "the build's")
        if seed == "older":
            problems.append(f"{node.name}: runs seed {answer.seed}, the build's is {seeds[node.name]}: roll it")
        elif seed == "unknown":
            problems.append(f"{node.name}: cannot tell which seed it runs ({answer.seed_error}); roll it, or see "
                            "docs/operations.md")
    members = next((a.members for a in answers if a.members is not None), None)
    names = {n.name for n in spec.nodes}
    unknown = [f"{m.get('name') or 'unstarted'} ({int(m.get('id', 0)):x}) at {','.join(m.get('peerURLs') or [])}"
               for m in members or [] if m.get("name") not in names]
    missing = sorted(names - {m.get("name") for m in members or []}) if members is not None else []
    problems += [f"member {m} is not in the spec; remove it (docs/operations.md)" for m in unknown]
    problems += [f"spec node {n} is not a member of the cluster" for n in missing]
    if members is None:
        problems.append("no member answered /members on its peer port: membership unknown")
    versions = {c for a in answers if (c := _label(a, "etcd_cluster_version", "cluster_version"))}
    return Status(rows=rows, cluster_version=", ".join(sorted(versions)) or None, rotation=rotation_step,
                  unknown_members=unknown, missing_members=missing, next=_next(rows), problems=problems)


def _drift(spec: Spec, row: Row) -> list[str]:
    """How a reachable node differs from what the build says it should run."""
    found = []
    for port, state in ((CLIENT_PORT, row.client_cert), (PEER_PORT, row.peer_cert)):
        if state == "older":
            found.append(f"serves an older certificate on {port} than {layout.cert_file(row.node)}: its new seed is "
                         "not running yet")
    if row.version is not None and row.version != spec.etcd.version:
        found.append(f"runs etcd {row.version}, the build says {spec.etcd.version}")
    if row.quota is not None and row.quota != spec.etcd.quota_backend_bytes:
        found.append(f"has a quota of {row.quota} bytes, the build says {spec.etcd.quota_backend_bytes}")
    return found


def _next(rows: Sequence[Row]) -> str:
    """Followers first, the leader last, and never while a member is down: that would cost the quorum."""
    down = [r.node for r in rows if not r.reachable and r.client_cert != "foreign"]
    foreign = [r.node for r in rows if r.client_cert == "foreign"]
    behind = [r for r in rows if r.reachable and not r.in_step]
    if down:
        return f"wait: {', '.join(down)} does not answer; roll nothing else until it is back"
    if foreign:
        return f"stop: {', '.join(foreign)} serves a certificate this cluster does not trust; find out why first"
    if not behind:
        return "nothing to roll"
    follower = next((r for r in behind if not r.leader), None)
    row = follower or behind[0]
    unknown = "; which seed it runs is unknown" if row.seed == "unknown" else ""
    return f"{row.node} (a follower{unknown})" if follower else f"{row.node} (the leader, last{unknown})"


def render(status: Status) -> str:
    """The text report: a row per node, the cluster lines, then the problems."""
    head = ("node", "ip", "etcd", "role", "lag", "db", "in use", "quota", "2379", "2380", "expires", "seed")
    table = [head]
    for r in status.rows:
        if not r.reachable:
            table.append((r.node, r.ip, "-", "untrusted" if r.client_cert == "foreign" else "down", "-", "-", "-",
                          "-", r.client_cert, "-", "-", "?"))
            continue
        role = "leader" if r.leader else "learner" if r.learner else "follower"
        table.append((r.node, r.ip, r.version or "?", role + (f" {r.alarms}" if r.alarms else ""),
                      "?" if r.raft_lag is None else str(r.raft_lag), _size(r.db_size), _size(r.db_in_use),
                      _size(r.quota), r.client_cert, r.peer_cert, r.expires or "?",
                      r.state))
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in table]
    lines.append(f"cluster version: {status.cluster_version or 'unknown'}")
    if status.rotation:
        lines.append(f"CA rotation: {status.rotation}")
    lines.append(f"next: {status.next}")
    lines += [f"problem: {p}" for p in status.problems]
    lines.append("healthy and in step with the build" if not status.problems else
                 f"{len(status.problems)} problem{'s' if len(status.problems) > 1 else ''}")
    # What members answer (names, labels) is not to be trusted on a terminal: a line break stays escaped.
    return "\n".join(printable(line) for line in lines) + "\n"


def _size(value: int | None) -> str:
    if value is None:
        return "?"
    if value >= 1 << 30:
        return f"{value / (1 << 30):.1f}G"
    return f"{value / (1 << 20):.1f}M" if value >= 1 << 20 else f"{value >> 10}K"


def _get(conn: http.client.HTTPSConnection, path: str, deadline: Deadline, ok: tuple[int, ...] = (200,)) -> bytes:
    conn.request("GET", path)
    response = conn.getresponse()
    body = response.read(MAX_BODY + 1)
    if deadline.passed:  # the watchdog ended a body with no Content-Length: what came is not all of it
        raise TimeoutError
    if len(body) > MAX_BODY:
        raise Untrue(f"answers GET {path} with more than {MAX_BODY >> 20} MiB")
    if response.length:  # a read cut short (by the deadline) returns what came, without an error
        raise OSError(f"GET {path} ended {response.length} bytes short of its Content-Length")
    if response.status not in ok:
        raise OSError(f"GET {path} answered {response.status}")
    return body


def _describe_foreign(ip: str, port: int, timeout: float) -> str:
    """Who issued the certificate a node serves, read without trusting it, for the message only."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    try:
        conn = http.client.HTTPSConnection(ip, port, timeout=timeout, context=context)
        conn.connect()
        der = conn.sock.getpeercert(binary_form=True)
        conn.close()
    except OSError:
        return ""
    if not der:
        return ""
    try:
        cert = x509.load_der_x509_certificate(der)
        return f" (it serves {cert.subject.rfc4514_string()}, issued by {cert.issuer.rfc4514_string()})"
    except ValueError:  # a certificate openssl took and cryptography will not parse: the message goes without it
        return ""


class Deadline:
    """One bound on everything asked of a node: a member that answers a byte at a time, or never finishes its
    headers, is cut off when it passes, however many reads that took. `close` ends its watchdogs."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds
        self.passed = False
        self._watchdogs: list[threading.Timer] = []

    def connect(self, ip: str, port: int, context: ssl.SSLContext) -> http.client.HTTPSConnection:
        conn = http.client.HTTPSConnection(ip, port, timeout=self._left(), context=context)
        # The socket is held here: http.client drops conn.sock when an HTTP/1.0 answer hands it to the response.
        held = self._watch(conn)
        conn.connect()
        held.append(conn.sock)
        self._bound(conn.sock)
        return conn

    def tls(self, ip: str, port: int, context: ssl.SSLContext) -> ssl.SSLSocket:
        """A TLS socket under the same deadline, for a protocol http.client does not speak (gRPC)."""
        raw = socket.create_connection((ip, port), timeout=self._left())
        held = self._watch(None)
        held.append(raw)
        sock = context.wrap_socket(raw, server_hostname=ip)
        held.append(sock)
        self._bound(sock)
        return sock

    def _left(self) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            self.passed = True
            raise TimeoutError
        return left

    def _watch(self, conn: http.client.HTTPSConnection | None) -> list[socket.socket]:
        """A watchdog that shuts down, at the deadline, the sockets put into the list it returns (and conn's)."""
        held: list[socket.socket] = []
        watchdog = threading.Timer(self._left(), self._cut, (conn, held))
        watchdog.daemon = True
        self._watchdogs.append(watchdog)
        watchdog.start()
        return held

    def _bound(self, sock: socket.socket) -> None:
        """Each read waits at most until the deadline: a member that keeps sending a byte now and then is cut off
        too (Linux keeps delivering data to a socket shut down for reading)."""
        read = sock.recv_into

        def recv_into(buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
            left = self.end - time.monotonic()
            if left <= 0:
                self.passed = True
                raise TimeoutError
            sock.settimeout(left)
            return read(buffer, nbytes, flags)

        sock.recv_into = recv_into  # type: ignore[method-assign]

    def _cut(self, conn: http.client.HTTPSConnection | None, held: list[socket.socket]) -> None:
        self.passed = True
        for sock in (*held, conn.sock if conn is not None else None):  # conn.sock alone while the handshake runs
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def left(self) -> float:
        """What remains, for a look outside the bounded reads (a foreign certificate's issuer); a little at least."""
        return max(self.end - time.monotonic(), 0.1)

    def close(self) -> None:
        for watchdog in self._watchdogs:
            watchdog.cancel()

    def reason(self, exc: BaseException) -> str:
        if self.passed or isinstance(exc, TimeoutError):
            return f"no complete answer within {self.seconds:g} s"
        return str(exc) or type(exc).__name__


class Untrue(ValueError):
    """An answer that is not of the shape etcd gives."""


def checked_metrics(metrics: Mapping[str, list[tuple[dict[str, str], float]]]) -> None:
    """Each metric assess reads is a finite number in etcd's range (a lying member may send NaN or +Inf)."""
    bad = sorted(name for name in READ for _, value in metrics.get(name, [])
                 if not (math.isfinite(value) and -MAX_COUNT < value < MAX_COUNT))
    if bad:
        raise Untrue(f"answers /metrics with values that are not finite numbers in range: {', '.join(bad)}")


def checked_health(document: Any) -> Mapping[str, Any]:
    if not (isinstance(document, dict) and isinstance(document.get("health"), str)
            and isinstance(document.get("reason", ""), str)):
        raise Untrue("answers /health with something other than etcd's {\"health\": ..., \"reason\": ...}")
    return document


def checked_members(document: Any) -> list[Mapping[str, Any]]:
    """/members as etcd gives it: a list of objects, each with a whole-number id, a name and lists of URLs."""
    if not isinstance(document, list):
        raise Untrue("answers /members with something other than a list")
    for m in document:
        member_id = m.get("id") if isinstance(m, dict) else None
        if not (isinstance(member_id, int) and not isinstance(member_id, bool) and 0 <= member_id < 1 << 64
                and isinstance(m.get("name", ""), str) and len(m.get("name", "")) <= 256
                and all(isinstance(urls, list) and len(urls) <= 16 and all(isinstance(u, str) and len(u) <= 256
                                                                             for u in urls)
                        for urls in (m.get("peerURLs", []), m.get("clientURLs", [])))):
            raise Untrue(f"answers /members with an entry that is not etcd's: {printable(repr(m)[:120])}")
    return document


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except RecursionError:  # nested deeper than the parser goes: no answer etcd gives
        raise Untrue("answers with JSON nested too deep to be etcd's") from None


def ask(node: Node, context: ssl.SSLContext, grpc_context: ssl.SSLContext, timeout: float) -> Answer:
    """Ask one node over mutual TLS, within one deadline for both ports; every failure, and every answer not
    of etcd's shape, becomes the answer's error, never an exception. `grpc_context` is `context` offering
    HTTP/2 (ALPN h2), for the seed record."""
    deadline = Deadline(timeout)
    try:
        answer = _ask(node, context, deadline)
        if answer.error is not None:
            return answer
        seed, why = _seed(node, grpc_context, deadline)
        return replace(answer, seed=seed, seed_error=why)
    finally:
        deadline.close()


SEED_ID = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?-[0-9a-f]{16}")  # as render makes it


def _seed(node: Node, context: ssl.SSLContext, deadline: Deadline) -> tuple[str | None, str | None]:
    """The instance-id the node's record in etcd names (its own etcd, a linearizable read), or why there is
    none to go by."""
    ip, key = str(node.ip), seed_key(node)
    try:
        sock = deadline.tls(ip, CLIENT_PORT, context)
        try:
            if sock.selected_alpn_protocol() != "h2":
                return None, f"{ip}:{CLIENT_PORT} does not offer HTTP/2, which etcd's gRPC needs"
            value = kvread.get(sock, f"{ip}:{CLIENT_PORT}", key.encode())
        finally:
            sock.close()
    except kvread.NoValue:
        return None, f"etcd refused the read of {key}: no quorum, or the admin certificate may not read it"
    except kvread.Malformed as exc:
        return None, f"{exc} on {ip}:{CLIENT_PORT}"
    except (OSError, ValueError) as exc:
        return None, f"no answer to the read of {key} ({deadline.reason(exc)})"
    if value is None:
        return None, f"etcd holds no {key}: its seed predates the record, or etcd-seed-report has not run yet"
    text = value.decode("ascii", "replace")
    if not (SEED_ID.fullmatch(text) and text[:-17] == node.name):
        return None, f"{key} holds '{printable(text[:80])}', not an instance-id of {node.name}"
    return text, None


def _ask(node: Node, context: ssl.SSLContext, deadline: Deadline) -> Answer:
    ip = str(node.ip)
    try:
        conn = deadline.connect(ip, CLIENT_PORT, context)
        try:
            client_cert = conn.sock.getpeercert(binary_form=True)
            metrics = parse_metrics(_get(conn, "/metrics", deadline).decode("utf-8", "replace"))
            checked_metrics(metrics)
            # 503: unhealthy, and the body says why.
            health = checked_health(_json(_get(conn, "/health", deadline, ok=(200, 503))))
        finally:
            conn.close()
    except ssl.SSLCertVerificationError as exc:
        foreign = _describe_foreign(ip, CLIENT_PORT, deadline.left())
        return Answer(node.name, foreign=True, error=f"serves a certificate on {CLIENT_PORT} that this cluster's "
                      f"trusted CAs do not vouch for its address {ip}: {exc.verify_message}{foreign}")
    except Untrue as exc:
        return Answer(node.name, error=f"{exc} on {ip}:{CLIENT_PORT}")
    except (OSError, ValueError, http.client.HTTPException) as exc:
        return Answer(node.name, error=f"does not answer on {ip}:{CLIENT_PORT} ({deadline.reason(exc)})")
    try:
        conn = deadline.connect(ip, PEER_PORT, context)
        try:
            peer_cert = conn.sock.getpeercert(binary_form=True)
            members = checked_members(_json(_get(conn, "/members", deadline)))
        finally:
            conn.close()
    except ssl.SSLCertVerificationError as exc:
        return Answer(node.name, client_cert=client_cert, metrics=metrics, health=health,
                      peer_error=f"serves a certificate on {PEER_PORT} that this cluster's trusted CAs do not vouch "
                      f"for: {exc.verify_message}"
                      f"{_describe_foreign(ip, PEER_PORT, deadline.left())}")
    except Untrue as exc:
        return Answer(node.name, client_cert=client_cert, metrics=metrics, health=health,
                      peer_error=f"{exc} on {ip}:{PEER_PORT}")
    except (OSError, ValueError, http.client.HTTPException) as exc:
        return Answer(node.name, client_cert=client_cert, metrics=metrics, health=health,
                      peer_error=f"does not answer on {ip}:{PEER_PORT} ({deadline.reason(exc)})")
    return Answer(node.name, client_cert=client_cert, peer_cert=peer_cert, metrics=metrics, health=health,
                  members=members)


def check(spec_path: Path, out: Path, timeout: float = TIMEOUT_S) -> Status:
    """Ask every spec node at once and assess the answers against the tree in output/.

    Raises:
        OutputError: the tree lacks the admin certificate or a node's certificate.
    """
    spec, _ = read_spec(spec_path)
    root = cluster_root(out, spec)
    trust = root / layout.trust_file((root / layout.CA_BUNDLE).exists())
    cert, key = root / layout.cert_file(layout.ADMIN), root / layout.key_file(layout.ADMIN)
    for path in (trust, cert, key, *(root / layout.cert_file(n.name) for n in spec.nodes)):
        if not path.is_file():
            raise OutputError(f"{path}: missing; status compares the cluster with the build's tree: run the build "
                              "first, or pass the --spec and --out it used")
    # Each tree file is read as a regular file of bounded size first: a FIFO or /dev/zero in its place would
    # hang or exhaust the reader (OpenSSL reads the admin key and certificate by name after this check).
    pem = {path: fs.read_regular(path, fs.LIMITS["pem"], str(path.relative_to(root)), error=OutputError) or b""
           for path in (trust, cert, key, *(root / layout.cert_file(n.name) for n in spec.nodes))}
    issued = {}
    seeds = {node.name: _instance_id(root, node) for node in spec.nodes}
    try:
        context, grpc_context = (_admin_context(pem[trust], cert, key, alpn) for alpn in ([], ["h2"]))
        for node in spec.nodes:
            leaf = x509.load_pem_x509_certificate(pem[root / layout.cert_file(node.name)])
            issued[node.name] = cert_fingerprint(leaf)
    except (OSError, ValueError, ssl.SSLError) as exc:
        raise OutputError(f"{root}: cannot read the admin certificate and key, the trusted CAs or a node's "
                          f"certificate ({exc})") from None
    manifest = read_manifest(root)
    recorded = manifest.files.get(layout.ROTATION)
    state = rotation.parse(fs.read_optional(root / layout.ROTATION, layout.ROTATION),
                           recorded.sha256 if recorded else None)
    step = rotation.describe(state.phase) if state.in_progress else None
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(spec.nodes)) as pool:
        answers = list(pool.map(lambda n: ask(n, context, grpc_context, timeout), spec.nodes))
    return assess(spec, issued, seeds, answers, step)


def _admin_context(trust: bytes, cert: Path, key: Path, alpn: list[str]) -> ssl.SSLContext:
    """Mutual TLS as the admin, trusting the tree's CAs; `alpn` ["h2"] for gRPC."""
    context = ssl.create_default_context(cadata=trust.decode("ascii"))
    context.load_cert_chain(str(cert), str(key))
    if alpn:
        context.set_alpn_protocols(alpn)
    return context


def _instance_id(root: Path, node: Node) -> str:
    """The instance-id of the seed the build made for `node`, from its meta-data in the tree."""
    name = layout.node_file(node.name, "meta-data")
    text = fs.read_regular(root / name, fs.LIMITS["pem"], name, error=OutputError) or b""
    found = re.fullmatch(rb'instance-id: "([a-z0-9-]{1,80})"\n(?s:.*)', text)
    if not found or not SEED_ID.fullmatch(found.group(1).decode()):
        raise OutputError(f"{root / name}: holds no instance-id of the shape the build writes: run the build")
    return found.group(1).decode()


# What a rotation step breaks when a node has not rolled the phase before it.
ROTATION_RISK = {"issue": "a node that does not trust the new CA yet refuses every certificate issued from it, and the "
                  "cluster splits",
         "finish": "a node still serving a certificate of the old CA is refused by every node that trusts only the "
                   "new one"}


def resumes(spec_path: Path, out: Path, step: str) -> bool:
    """Whether `rotate-ca <step>` continues a run of the same step that was killed among its renames."""
    spec, _ = read_spec(spec_path)
    return journal.interrupted_step(cluster_root(out, spec)) == step


def confirm_rolled(spec_path: Path, out: Path, step: str, timeout: float = TIMEOUT_S) -> None:
    """Before `rotate-ca issue|finish`: every node confirms that it runs the seed of the phase before.

    Raises:
        MaterialError: naming each node that is not in step, and why.
        OutputError: the tree lacks what status needs.
    """
    report = check(spec_path, out, timeout)
    pending = [r for r in report.rows if r.state != "in step"]
    # A member the spec no longer names (scaled in, not yet removed) still takes part, and has no row to confirm.
    others = [f"member {m} is not in the spec" for m in report.unknown_members] + \
        [p for p in report.problems if p.startswith("no member answered /members")]
    if not pending and not others:
        return
    why = {r.node: ", ".join(p.split(": ", 1)[1] for p in report.problems if p.startswith(f"{r.node}: "))
           for r in pending}
    nodes = "; ".join([f"{r.node} {'down' if not r.reachable else r.state} ({why[r.node]})" for r in pending]
                      + others)
    phase = report.rotation or "no rotation"
    raise MaterialError(f"rotate-ca {step}: not every node runs the seed of the phase before ({phase}): {nodes}; "
                        f"roll them first (etcd-seed status names the next), or pass --force: {ROTATION_RISK[step]}")
