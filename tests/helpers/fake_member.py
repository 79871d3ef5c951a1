"""A fake etcd member for status tests: /metrics and /health on 2379, /members on 2380, over mutual TLS with the
certificate the build issued its node. Honest, or lying in one way (MODES), as real etcd cannot be made to.

usage: python -m tests.helpers.fake_member IP CERT KEY CA MODE NAMES
"""

from __future__ import annotations

import json
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODES = ("honest", "nan", "inf", "member-id", "member-name-list", "nested-health", "huge-metrics", "drip",
         "drip-headers")


def metrics(leader: bool, mode: str) -> str:
    size = {"nan": "NaN", "inf": "2.0e+04"}.get(mode, "20480")
    applied = "+Inf" if mode == "inf" else "12"
    return (f"etcd_server_is_leader {int(leader)}\netcd_server_has_leader 1\netcd_server_is_learner 0\n"
            'etcd_server_version{server_version="3.5.1"} 1\netcd_cluster_version{cluster_version="3.5"} 1\n'
            f"etcd_server_quota_backend_bytes 2.147483648e+09\netcd_mvcc_db_total_size_in_bytes {size}\n"
            f"etcd_mvcc_db_total_size_in_use_in_bytes 16384\netcd_server_proposals_committed_total 12\n"
            f"etcd_server_proposals_applied_total {applied}\n")


def members(names: list[str], ips: list[str], mode: str) -> object:
    listed: list[dict[str, object]] = [
        {"id": 10 + i, "name": n, "peerURLs": [f"https://{ip}:2380"], "clientURLs": [f"https://{ip}:2379"]}
        for i, (n, ip) in enumerate(zip(names, ips, strict=True))]
    if mode == "member-id":
        listed[0]["id"] = "not a number"
    if mode == "member-name-list":
        listed[0]["name"] = ["etcd01"]
    return listed


def serve(ip: str, cert: str, key: str, ca: str, mode: str, names: list[str], ips: list[str]) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.load_verify_locations(ca)
    context.verify_mode = ssl.CERT_REQUIRED
    leader = ip == ips[0]

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            if mode == "drip-headers":
                for byte in b"HTTP/1.1 200 OK\r\n" * 100:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(0.2)
                return
            body: bytes
            if self.path == "/metrics":
                body = metrics(leader, mode).encode()
                if mode == "huge-metrics":
                    body += b"# padding\n" * ((5 << 20) // 10)
            elif self.path == "/health":
                body = (b"[" * 100_000 + b"]" * 100_000) if mode == "nested-health" else \
                    b'{"health":"true","reason":""}'
            elif self.path == "/members":
                body = json.dumps(members(names, ips, mode)).encode()
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if mode == "drip" and self.path == "/metrics":
                for i in range(len(body)):
                    self.wfile.write(body[i:i + 1])
                    self.wfile.flush()
                    time.sleep(0.5)
                return
            self.wfile.write(body)

    for port in (2379, 2380):
        server = ThreadingHTTPServer((ip, port), Handler)
        server.daemon_threads = True
        server.socket = context.wrap_socket(server.socket, server_side=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
    print("listening", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    ip, cert, key, ca, mode, names, ips = sys.argv[1:8]
    assert mode in MODES, mode
    serve(ip, cert, key, ca, mode, names.split(","), ips.split(","))
