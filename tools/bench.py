"""Benchmark etcd-seed; prints timings and asserts nothing.

usage: python tools/bench.py [--baseline PATH] [--sizes 10,30,100]

1. The example (3 nodes) from a cold start, beside the manual flow scripted in
   shared/bench/baseline.sh (openssl + genisoimage), with the ratio.
2. A no-op re-run of the example.
3. Growth with the number of nodes, split into key generation, rendering and ISO writing.
4. ISO writing throughput against a plain copy of the same bytes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from generator import fs  # noqa: E402 - after the path set-up above
from generator.build import apply_plan, load_inputs, load_sources, plan_build  # noqa: E402
from generator.iso import SeedEntry, build_iso  # noqa: E402
from generator.pki import KeyRecords, build_pki  # noqa: E402
from generator.render import make_environment  # noqa: E402
from generator.spec import load_spec  # noqa: E402

BUNDLE = ROOT / "vendor" / "etcd-v3.5.1-linux-amd64.tar.gz"


def spec_text(nodes: int) -> str:
    members = "\n".join(f'  - {{name: etcd{i}, ip: 10.77.0.{i}, mac: "52:54:00:77:00:{i:02x}"}}'
                        for i in range(1, nodes + 1))
    return f"""cluster: {{name: bench, domain: example.com}}
network: {{prefix: 24}}
nodes:
{members}
etcd: {{version: "3.5.1", bundle: {BUNDLE}}}
pki: {{key_type: rsa2048}}
"""


def timed(argv: list[str], **kwargs: object) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, **kwargs)  # type: ignore[call-overload]
    return time.perf_counter() - start


def example_vs_baseline(work: Path, baseline: Path) -> None:
    spec = work / "example.yaml"
    spec.write_text(spec_text(3))
    build = [sys.executable, "-m", "generator", "build", "--spec", str(spec), "--out", str(work / "out")]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    ours = timed(build, env=env)
    theirs = timed(["bash", str(baseline), "3", str(work / "baseline"), str(BUNDLE)])
    print(f"example, 3 nodes:   etcd-seed {ours:6.2f} s   baseline.sh {theirs:6.2f} s   "
          f"ratio {ours / theirs:.2f} (goal: at most 1.00)")
    reruns = [timed(build, env=env) for _ in range(5)]
    print(f"no-op re-run:       median {statistics.median(reruns):.3f} s over 5 runs "
          f"(min {min(reruns):.3f}; goal: under 0.5 s)")


def scaling(work: Path, sizes: list[int], baseline: Path) -> None:
    """The build's own plan and apply, as `make seeds` runs them, timed per stage."""
    env = make_environment()
    sources = None
    print("nodes   keys+certs   plan (keys, render, ISOs)   write   total    baseline.sh")
    for n in sizes:
        spec, _ = load_spec(spec_text(n), base_dir=work)
        out = work / f"scale{n}" / spec.name
        sources = sources or load_sources(spec)
        t0 = time.perf_counter()
        build_pki(spec, {}, None, dt.datetime.now(dt.UTC), KeyRecords())
        t1 = time.perf_counter()
        fs.make_dirs(out, {})
        plan = plan_build(spec, load_inputs(spec, out, sources), env, dt.datetime.now(dt.UTC), None)
        t2 = time.perf_counter()
        apply_plan(out, plan)
        t3 = time.perf_counter()
        shutil.rmtree(out.parent, ignore_errors=True)
        base_out = work / f"base{n}"
        theirs = timed(["bash", str(baseline), str(n), str(base_out), str(BUNDLE)])
        shutil.rmtree(base_out, ignore_errors=True)
        print(f"{n:5d}   {t1 - t0:9.2f} s {t2 - t1:24.2f} s {t3 - t2:6.2f} s {t3 - t1:6.2f} s   {theirs:7.2f} s")


def iso_throughput(work: Path) -> None:
    data = BUNDLE.read_bytes()
    entries = [SeedEntry("user-data", b"#cloud-config\n" * 500), SeedEntry("meta-data", b"x\n"),
               SeedEntry("network-config", b"version: 2\n"), SeedEntry(BUNDLE.name, data)]
    runs = []
    for _ in range(3):
        start = time.perf_counter()
        image = build_iso(entries, 0)
        (work / "t.iso").write_bytes(image)
        runs.append(time.perf_counter() - start)
    copies = []
    for _ in range(3):
        start = time.perf_counter()
        shutil.copyfile(work / "t.iso", work / "copy.iso")
        copies.append(time.perf_counter() - start)
    mib = len(image) / 2**20
    iso_rate, copy_rate = mib / statistics.median(runs), mib / statistics.median(copies)
    print(f"ISO writing:        {iso_rate:7.0f} MiB/s   plain copy {copy_rate:7.0f} MiB/s   "
          f"({iso_rate / copy_rate:.2f} of a copy, {mib:.1f} MiB image)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, default=ROOT.parent / "shared" / "bench" / "baseline.sh")
    parser.add_argument("--sizes", default="10,30,100")
    args = parser.parse_args()
    if not BUNDLE.exists():
        raise SystemExit("error: run 'make bundle' first")
    if not args.baseline.exists():
        raise SystemExit(f"error: {args.baseline}: no baseline script")
    with tempfile.TemporaryDirectory(prefix="etcd-seed-bench-") as tmp:
        work = Path(tmp)
        example_vs_baseline(work, args.baseline)
        iso_throughput(work)
        scaling(work, [int(s) for s in args.sizes.split(",")], args.baseline)


if __name__ == "__main__":
    main()
