"""A `use: prometheus` client's files, read by Prometheus' own promtool: the scrape job is a valid configuration
and the alert rules fire on exactly the failures they name, and stay quiet on a healthy cluster."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.helpers.cli import build, set_spec

PROMTOOL = shutil.which("promtool")
pytestmark = pytest.mark.skipif(PROMTOOL is None, reason="needs promtool (Debian's prometheus); make test installs it")
JOB = "etcd-demo"


@pytest.fixture
def built(workdir: Path) -> Path:
    """A tree whose spec has a Prometheus client, its files meant for workdir/prom."""
    set_spec(workdir, "flannel:", f"clients:\n  - {{name: metrics, use: prometheus, dir: {workdir}/prom}}\nflannel:")
    code, _, err = build(workdir)
    assert code == 0, err
    return workdir / "out" / "demo"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60, check=False)


def test_scrape_job_is_a_valid_configuration_with_every_member(built: Path, workdir: Path) -> None:
    """Installed as its header says, `promtool check config` accepts the file (rule file and TLS files included),
    and the job scrapes every member's client URL over TLS with the client's own certificate."""
    prom = workdir / "prom"
    prom.mkdir()
    for source, target in (("pki/ca.crt", "ca.crt"), ("pki/metrics.crt", "metrics.crt"),
                           ("pki/metrics.key", "metrics.key"), ("clients/metrics.etcd-rules.yml", "etcd-rules.yml")):
        shutil.copy(built / source, prom / target)
    config = built / "clients" / "metrics.prometheus.yml"
    done = promtool("check", "config", str(config))
    assert done.returncode == 0 and "SUCCESS: 1 rule files found" in done.stdout, done.stdout + done.stderr
    job = yaml.safe_load(config.read_text())["scrape_configs"][0]
    assert job["job_name"] == JOB and job["scheme"] == "https"
    assert job["static_configs"][0]["targets"] == [f"192.168.0.{i}:2379" for i in (1, 2, 3)]
    assert job["tls_config"] == {"ca_file": f"{prom}/ca.crt", "cert_file": f"{prom}/metrics.crt",
                                 "key_file": f"{prom}/metrics.key"}
    (prom / "metrics.key").unlink()  # the check reads what the job names: a missing key is an error
    assert promtool("check", "config", str(config)).returncode != 0


def _alert(name: str, instance: str, severity: str, summary: str) -> dict[str, object]:
    return {"alertname": name, "exp_alerts": [{"exp_labels": {"severity": severity, "job": JOB, "instance": instance},
                                               "exp_annotations": {"summary": summary}}]}


def _series(metric: str, instance: str, values: str, **labels: str) -> dict[str, str]:
    extra = "".join(f', {k}="{v}"' for k, v in labels.items())
    return {"series": f'{metric}{{job="{JOB}", instance="{instance}"{extra}}}', "values": values}


HEALTHY = "192.168.0.1:2379"
SICK = "192.168.0.2:2379"


def _buckets(metric: str, instance: str, slow: bool) -> list[dict[str, str]]:
    """A latency histogram: every observation under 10 ms, or (slow) every one between 1 and 2 s."""
    counts = {"0.01": "0+0x30" if slow else "0+100x30", "2": "0+100x30", "+Inf": "0+100x30"}
    return [_series(metric, instance, values, le=le) for le, values in counts.items()]


def test_alert_rules_fire_on_each_failure_and_not_on_a_healthy_member(built: Path, tmp_path: Path) -> None:
    """promtool test rules: for every alert, a sick member's series fires it with its labels and summary, after
    its `for`, while a healthy member's fires nothing, and neither does another job's target."""
    rules = built / "clients" / "metrics.etcd-rules.yml"
    assert promtool("check", "rules", str(rules)).stdout.count("SUCCESS: 9 rules found") == 1
    series = [
        _series("up", HEALTHY, "1x30"), _series("up", SICK, "1 1 0x28"),
        {"series": 'up{job="node", instance="192.168.0.9:9100"}', "values": "0x30"},  # another job's: not ours
        _series("etcd_server_has_leader", HEALTHY, "1x30"), _series("etcd_server_has_leader", SICK, "1 0x29"),
        _series("etcd_server_leader_changes_seen_total", HEALTHY, "1x30"),
        _series("etcd_server_leader_changes_seen_total", SICK, "0+1x30"),
        *_buckets("etcd_disk_wal_fsync_duration_seconds_bucket", HEALTHY, slow=False),
        *_buckets("etcd_disk_wal_fsync_duration_seconds_bucket", SICK, slow=True),
        *_buckets("etcd_disk_backend_commit_duration_seconds_bucket", HEALTHY, slow=False),
        *_buckets("etcd_disk_backend_commit_duration_seconds_bucket", SICK, slow=True),
        _series("etcd_mvcc_db_total_size_in_bytes", HEALTHY, "1000000x30"),
        _series("etcd_mvcc_db_total_size_in_bytes", SICK, "1700000000x30"),
        _series("etcd_server_quota_backend_bytes", HEALTHY, "2000000000x30"),
        _series("etcd_server_quota_backend_bytes", SICK, "2000000000x30"),
        _series("grpc_server_handled_total", HEALTHY, "0x30", grpc_service="etcdserverpb.KV",
                grpc_code="ResourceExhausted"),
        _series("grpc_server_handled_total", SICK, "0+3x30", grpc_service="etcdserverpb.KV",
                grpc_code="ResourceExhausted"),
        _series("etcd_server_proposals_pending", HEALTHY, "0x30"),
        _series("etcd_server_proposals_pending", SICK, "12x30"),
        _series("etcd_server_proposals_failed_total", HEALTHY, "0x30"),
        _series("etcd_server_proposals_failed_total", SICK, "0+2x30"),
    ]
    who = f"etcd member {SICK}"
    at_20m = [
        _alert("EtcdMemberDown", SICK, "critical", f"{who} cannot be scraped: down, or refusing the client "
               "certificate"),
        _alert("EtcdNoLeader", SICK, "critical", f"{who} has no leader: its cluster has lost quorum, or it is cut off"),
        _alert("EtcdFrequentLeaderChanges", SICK, "warning", f"{who} saw more than 3 leader changes in an hour: "
               "slow disks or network, or a member flapping"),
        _alert("EtcdSlowWalFsync", SICK, "warning", f"{who}: WAL fsync p99 above 0.5 s for 10 minutes; its disk is "
               "too slow for etcd"),
        _alert("EtcdSlowBackendCommit", SICK, "warning", f"{who}: backend commit p99 above 0.25 s for 10 minutes; "
               "its disk is too slow for etcd"),
        _alert("EtcdDatabaseNearQuota", SICK, "warning", f"{who}: its database is 85% of its quota; compact and "
               "defragment before writes stop"),
        _alert("EtcdSpaceExceeded", SICK, "critical", f"{who} refuses writes: database space exceeded (NOSPACE "
               "alarm); compact, defragment, then etcdctl alarm disarm"),
        _alert("EtcdProposalBacklog", SICK, "warning", f"{who} has 12 proposals pending: the cluster cannot commit "
               "fast enough"),
        _alert("EtcdProposalsFailing", SICK, "warning", f"{who}: more than 5 proposals failed in 15 minutes, usually "
               "leader elections or lost quorum"),
    ]
    # One minute in, no `for` has passed and no counter has grown enough: nothing fires for either member.
    quiet = [{"alertname": a["alertname"], "exp_alerts": []} for a in at_20m
             if a["alertname"] not in ("EtcdSpaceExceeded",)]
    tests = {"rule_files": [str(rules)], "evaluation_interval": "1m",
             "tests": [{"interval": "1m", "input_series": series,
                        "alert_rule_test": [{"eval_time": "20m", **a} for a in at_20m]
                        + [{"eval_time": "1m", **q} for q in quiet]}]}
    unit = tmp_path / "etcd-rules.test.yml"
    unit.write_text(yaml.safe_dump(tests, sort_keys=False))
    done = promtool("test", "rules", str(unit))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout
