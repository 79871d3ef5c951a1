"""Benchmark etcd-seed; prints timings beside their goals and asserts nothing.

usage: python tools/bench.py [--baseline PATH] [--sizes 10,30,100,150] [--runs 7]

1. A fresh 3-node build beside the manual flow scripted in tools/baseline.sh
   (openssl + genisoimage, the same bundle), paired run by run, with the ratio of the medians.
2. A no-op re-run of build and of plan (the fast path), median of several.
3. ISO writing throughput against a plain copy of the same bytes.
4. Growth with the number of nodes: a fresh build through build.run (the same entry point as the
   CLI) timed by its stages (keys and certificates, rendering and ISO digests, writing), and a full
   `verify` (its time and peak RSS, in a process of its own), then the 150-node verify alone.
Each figure is printed with the machine's load average at the time.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from generator.build import Options, run  # noqa: E402 - after the path set-up above
from generator.iso import SeedEntry, write_iso  # noqa: E402

BUNDLE = ROOT / "vendor" / "etcd-v3.5.1-linux-amd64.tar.gz"  # the real 18 MB release layout
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def spec_text(nodes: int) -> str:
    members = "\n".join(f'  - {{name: etcd{i}, ip: 10.77.{i // 250}.{i % 250 + 1}, '
                        f'mac: "52:54:00:77:{i // 250:02x}:{i % 250 + 1:02x}"}}' for i in range(nodes))
    return f"""cluster: {{name: bench, domain: example.com}}
network: {{prefix: 16}}
nodes:
{members}
etcd: {{version: "3.5.1", bundle: {BUNDLE}}}
pki: {{key_type: rsa2048}}
"""


def load() -> str:
    return "load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def timed(argv: list[str], **kwargs: object) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kwargs)  # type: ignore[call-overload]
    return time.perf_counter() - start


def cli(command: str, spec: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "generator", command, "--spec", str(spec), "--out", str(out)]


def fresh_vs_baseline(work: Path, baseline: Path, runs: int) -> None:
    spec = work / "example.yaml"
    spec.write_text(spec_text(3))
    ours, theirs = [], []
    for i in range(runs):  # paired: each run of ours beside one of the script, in turn
        shutil.rmtree(work / "out", ignore_errors=True)
        ours.append(timed(cli("build", spec, work / "out"), env=ENV))
        theirs.append(timed(["bash", str(baseline), "3", str(work / f"baseline{i}"), str(BUNDLE)]))
    a, b = statistics.median(ours), statistics.median(theirs)
    print(f"fresh 3-node build:  etcd-seed {a:5.2f} s   baseline.sh {b:5.2f} s   ratio {a / b:.2f} "
          f"(goal: at most 0.60; medians of {runs} paired runs; {load()})")

    for command in ("build", "plan"):
        timed(cli("build", spec, work / "out"), env=ENV)  # a full run that changes nothing records itself
        again = [timed(cli(command, spec, work / "out"), env=ENV) for _ in range(runs)]
        print(f"no-op {command:5s}:         median {statistics.median(again):.3f} s over {runs} runs "
              f"(min {min(again):.3f}; goal: at most 0.200; {load()})")


def iso_throughput(work: Path) -> None:
    data = BUNDLE.read_bytes()
    entries = [SeedEntry("user-data", b"#cloud-config\n" * 500), SeedEntry("meta-data", b"x\n"),
               SeedEntry("network-config", b"version: 2\n"), SeedEntry(BUNDLE.name, data)]
    runs, copies = [], []
    for _ in range(5):
        start = time.perf_counter()
        with open(work / "t.iso", "wb") as handle:
            write_iso(entries, 0, handle)
        runs.append(time.perf_counter() - start)
        start = time.perf_counter()
        shutil.copyfile(work / "t.iso", work / "copy.iso")
        copies.append(time.perf_counter() - start)
    mib = (work / "t.iso").stat().st_size / 2**20
    iso_rate, copy_rate = mib / statistics.median(runs), mib / statistics.median(copies)
    print(f"ISO writing:         {iso_rate:6.0f} MiB/s   plain copy {copy_rate:6.0f} MiB/s   "
          f"{iso_rate / copy_rate:.2f} of a copy (goal: at least 0.70; {mib:.1f} MiB image; {load()})")


def verify_run(spec: Path, out: Path) -> tuple[float, int]:
    """Seconds and peak RSS (MiB) of `verify` in a process of its own."""
    argv = ["/usr/bin/time", "-f", "%M", *cli("verify", spec, out)]
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env=ENV, check=False)
    took = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"error: verify failed:\n{done.stderr[-2000:]}")
    return took, int(done.stderr.strip().splitlines()[-1]) // 1024


def scaling(work: Path, sizes: list[int]) -> tuple[float, int] | None:
    """A fresh build of n nodes through build.run, by stage, and verify of the result."""
    print("nodes   keys+certs  render+ISO digests  write    build    verify   verify peak RSS")
    last = None
    for n in sizes:
        spec_file = work / f"scale{n}.yaml"
        spec_file.write_text(spec_text(n))
        out = work / f"out{n}"
        start = time.perf_counter()
        result = run(spec_file, out, Options())
        build = time.perf_counter() - start
        stage = result.timings
        took, rss = verify_run(spec_file, out)
        shutil.rmtree(out)
        last = (took, rss)
        print(f"{n:5d}  {stage['pki']:8.2f} s  {stage['outputs']:15.2f} s  {stage['write']:5.2f} s  {build:6.2f} s  "
              f"{took:6.2f} s  {rss:5d} MiB   ({load()})")
    return last if sizes and sizes[-1] == 150 else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, default=ROOT / "tools" / "baseline.sh")
    parser.add_argument("--sizes", default="10,30,100,150")
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    if not BUNDLE.exists():
        raise SystemExit("error: run 'make test' first: it builds vendor/etcd-v3.5.1-linux-amd64.tar.gz")
    if not args.baseline.exists():
        raise SystemExit(f"error: {args.baseline}: no baseline script")
    print(f"{os.cpu_count()} cores; {load()}; Python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory(prefix="etcd-seed-bench-") as tmp:
        work = Path(tmp)
        fresh_vs_baseline(work, args.baseline, args.runs)
        iso_throughput(work)
        result = scaling(work, [int(s) for s in args.sizes.split(",")])
        if result:
            print(f"verify, 150 nodes:   {result[0]:.2f} s (goal: under 10 s), peak RSS {result[1]} MiB "
                  "(goal: under 150 MiB, flat in the node count)")
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(f"bench itself: {usage.ru_utime + usage.ru_stime:.1f} s CPU")


if __name__ == "__main__":
    main()
