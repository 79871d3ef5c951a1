"""CLI: argument parsing, exit codes and printing; the only module that prints."""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from cryptography import x509

from . import __version__, fs, manifest, sealed
from .build import NodeBuild, plan_artifacts, render_all
from .errors import GeneratorError, MaterialError
from .pki import PkiState, build_pki
from .render import make_environment
from .spec import Spec, load_spec
from .verify import Finding, verify_tree

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_BUG = 0, 1, 2, 3


def main(argv: Sequence[str] | None = None, stdout: TextIO | None = None,
         stderr: TextIO | None = None) -> int:
    """Run the command line; returns the exit code instead of exiting."""
    out, err = stdout or sys.stdout, stderr or sys.stderr
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse has printed its usage error
        return EXIT_OK if exc.code == 0 else EXIT_USAGE
    try:
        code: int = args.run(args, out, err)
        return code
    except GeneratorError as exc:
        for message in exc.messages:
            print(f"error: {message}", file=err)
        if exc.hint:
            print(f"hint: {exc.hint}", file=err)
        return EXIT_ERROR
    except BrokenPipeError:  # output piped into `head` and the like
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("error: interrupted", file=err)
        return EXIT_ERROR
    except Exception as exc:  # a bug: say so in one line, unless asked for the traceback
        if os.environ.get("ETCD_SEED_DEBUG"):
            raise
        print(f"error: internal error, please report it: {type(exc).__name__}: {exc}", file=err)
        print("hint: set ETCD_SEED_DEBUG=1 to see the traceback", file=err)
        return EXIT_BUG


def main_entry() -> None:
    """Console-script entry point."""
    raise SystemExit(main())


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="etcd-seed",
        description="Generate TLS certificates and cloud-init NoCloud seed ISOs for an etcd cluster.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    build = commands.add_parser("build", help="issue certificates and write every node's seed")
    build.add_argument("--spec", type=Path, default=Path("cluster.yaml"),
                       help="cluster definition (default: cluster.yaml)")
    build.add_argument("--out", type=Path, default=Path("output"),
                       help="output root; files go to OUT/<cluster>/ (default: output)")
    build.set_defaults(run=_run_build)
    plan = commands.add_parser("plan", help="show what a build would change, per node and file; write nothing")
    plan.add_argument("--spec", type=Path, default=Path("cluster.yaml"))
    plan.add_argument("--out", type=Path, default=Path("output"))
    plan.set_defaults(run=_run_plan)
    verify = commands.add_parser("verify", help="check output/ against the spec, the CA, the manifest "
                                 "and CIS 2; exit 1 on any failure")
    verify.add_argument("--spec", type=Path, default=Path("cluster.yaml"))
    verify.add_argument("--out", type=Path, default=Path("output"))
    verify.add_argument("--warn-days", type=int, default=30, help="warn when a certificate expires sooner")
    verify.add_argument("--fail-days", type=int, default=7, help="fail when a certificate expires sooner")
    verify.set_defaults(run=_run_verify)
    seal = commands.add_parser("seal", help="encrypt the private keys with age, for committing")
    seal.add_argument("--spec", type=Path, default=Path("cluster.yaml"))
    seal.add_argument("--out", type=Path, default=Path("output"))
    seal.add_argument("--recipient", action="append", default=[], required=True,
                      help="age public key (age1...); repeat for several operators")
    seal.set_defaults(run=_run_seal)
    unseal = commands.add_parser("unseal", help="decrypt sealed keys with an age identity")
    unseal.add_argument("--spec", type=Path, default=Path("cluster.yaml"))
    unseal.add_argument("--out", type=Path, default=Path("output"))
    unseal.add_argument("--identity", type=Path, required=True, help="age identity file (age-keygen)")
    unseal.set_defaults(run=_run_unseal)
    check = commands.add_parser("check", help="validate the spec and its inputs, write nothing")
    check.add_argument("--spec", type=Path, default=Path("cluster.yaml"))
    check.set_defaults(run=_run_check)
    hasher = commands.add_parser("hash-password",
                                 help="read a password and print its hash for admin.password_hash")
    hasher.set_defaults(run=_run_hash_password)
    return parser


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _source_date_epoch() -> int | None:
    value = os.environ.get("SOURCE_DATE_EPOCH")
    if value is None:
        return None
    if not value.isdigit():
        raise MaterialError(f"SOURCE_DATE_EPOCH: '{value}' is not a whole number of seconds")
    return int(value)


def _read_spec(spec_path: Path, err: TextIO | None = None) -> Spec:
    """The validated spec; its warnings go to `err` when given."""
    spec, warnings = load_spec(fs.read_spec_text(spec_path), base_dir=spec_path.parent, source=str(spec_path))
    for warning in warnings if err is not None else []:
        print(f"warning: {warning}", file=err)
    return spec


def _load_inputs(spec: Spec, checked: frozenset[str] = frozenset()
                 ) -> tuple[fs.Bundle, tuple[bytes, bytes] | None]:
    """The bundle and any imported CA, with every problem of both reported at once."""
    problems: list[str] = []
    hints: list[str] = []
    bundle = imported = None
    try:
        bundle = fs.load_bundle(spec, checked)
    except MaterialError as exc:
        problems += exc.messages
        hints += [exc.hint] if exc.hint else []
    try:
        imported = fs.load_imported_ca(spec)
    except MaterialError as exc:
        problems += exc.messages
    if problems or bundle is None:
        raise MaterialError(problems, hint="; ".join(hints) or None)
    return bundle, imported


def _run_check(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    spec = _read_spec(args.spec, err)
    _load_inputs(spec)
    print(f"{args.spec}: cluster {spec.name}, {len(spec.nodes)} members, etcd "
          f"{spec.etcd.version}: ok", file=out)
    return EXIT_OK


@dataclass(frozen=True)
class _Prepared:
    spec: Spec
    root: Path
    pki: PkiState
    builds: list[NodeBuild]
    artifacts: list[fs.Artifact]
    previous: dict[str, Any]
    certs: dict[str, x509.Certificate]
    bundle: fs.Bundle


def _prepare(args: argparse.Namespace, err: TextIO) -> _Prepared:
    """Everything a build would write, computed in memory: nothing touches the disk yet."""
    spec = _read_spec(args.spec, err)
    root = args.out / spec.name
    previous = manifest.parse_manifest(fs.read_optional(root / manifest.NAME))
    bundle, imported = _load_inputs(spec, frozenset({str(previous.get("bundle", {}).get("sha256"))}))
    epoch = _source_date_epoch()
    if args.out.exists() and not args.out.is_dir():
        raise MaterialError(f"--out: {args.out} is not a directory")
    pki = build_pki(spec, fs.load_pki_dir(root / "pki"), imported, _now())
    env = make_environment()
    builds = render_all(env, spec, pki, bundle, epoch)
    artifacts = plan_artifacts(env, spec, pki, builds, bundle)
    certs = {"pki/ca.crt": pki.ca.cert, "pki/admin.crt": pki.admin.cert,
             **{f"pki/{name}.crt": cred.cert for name, cred in pki.nodes.items()}}
    return _Prepared(spec, root, pki, builds, artifacts, previous, certs, bundle)


def _run_build(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    p = _prepare(args, err)
    fs.ensure_dir(p.root / "pki", fs.SECRET_DIR_MODE)
    states = fs.sync(p.root, p.artifacts, p.previous["files"], write=True)
    document = manifest.render_manifest(p.spec, states, p.certs, p.bundle)
    states += fs.sync(p.root, [fs.Artifact(manifest.NAME, fs.PUBLIC_MODE, lambda: document)], {}, write=True)
    changed = [s for s in states if s.status != "unchanged"]
    for event in p.pki.events:
        print(f"pki: {event}", file=out)
    print(f"{p.root}: {len(changed)} of {len(states)} files written"
          + ("" if changed else " (nothing changed)"), file=out)
    sizes = {s.path.split("/")[0]: s.size or 0 for s in states if s.path.endswith("/seed.iso")}
    _print_table(out, [(b.node.name, str(b.node.ip),
                        f"{p.pki.nodes[b.node.name].cert.not_valid_after_utc:%Y-%m-%d}",
                        _size(sizes[b.node.name])) for b in p.builds])
    print(f"check the cluster: cd {p.root / 'pki'} && set -a && . ./etcdctl.env && set +a && "
          "etcdctl endpoint health", file=out)
    for node in (n for n in p.spec.nodes if n.join):
        print(f"{node.name} joins a running cluster: before it boots, run (as above) "
              f"etcdctl member add {node.name} --peer-urls=https://{node.ip}:2380", file=out)
    return EXIT_OK


def _run_plan(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    p = _prepare(args, err)
    states = fs.sync(p.root, p.artifacts, p.previous["files"], write=False)
    changed = [s for s in states if s.status != "unchanged"]
    for event in p.pki.events:
        if not event.endswith(": reused"):
            print(f"pki: {event}", file=out)
    width = max((len(s.path) for s in changed), default=0)
    for state in changed:
        print(f"  {state.path.ljust(width)}  {state.status}", file=out)
    if changed:
        print(f"  {manifest.NAME.ljust(width)}  {'create' if not p.previous['files'] else 'update'}", file=out)
    counts = {k: sum(1 for s in changed if s.status == k) for k in ("create", "update", "mode")}
    print(f"{p.root}: {counts['create']} to create, {counts['update']} to update, "
          f"{counts['mode']} to chmod, {len(states) - len(changed)} unchanged", file=out)
    return EXIT_OK


def _run_verify(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    spec = _read_spec(args.spec)
    root = args.out / spec.name
    if not root.is_dir():
        raise MaterialError(f"{root}: no output to verify; run a build first")
    if args.fail_days > args.warn_days:
        raise MaterialError("--fail-days must not exceed --warn-days")
    files, modes = fs.read_tree(root)
    found = verify_tree(spec, files, modes, _now(), args.warn_days, args.fail_days, make_environment())
    for name in sorted(p for p in files if p.endswith("/user-data")):
        problem = fs.cloud_init_schema(root / name)
        if problem:
            found.append(Finding(name, problem))
    for finding in found:
        print(f"{'error' if finding.error else 'warning'}: {finding}", file=err)
    errors = sum(f.error for f in found)
    print(f"{root}: {len(files)} files checked, {errors} errors, {len(found) - errors} warnings",
          file=out)
    return EXIT_ERROR if errors else EXIT_OK


def _cluster_pki(args: argparse.Namespace) -> Path:
    spec = _read_spec(args.spec)
    pki_dir: Path = args.out / spec.name / "pki"
    if not pki_dir.is_dir():
        raise MaterialError(f"{pki_dir}: no PKI here; run a build first")
    return pki_dir


def _run_seal(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    pki_dir = _cluster_pki(args)
    result = sealed.seal(pki_dir, args.recipient)
    for name in result.sealed:
        print(f"sealed: {pki_dir / name}", file=out)
    print(f"{pki_dir}: {len(result.sealed)} keys sealed, {len(result.unchanged)} unchanged; "
          f"commit the .key.age files and {sealed.INDEX}", file=out)
    return EXIT_OK


def _run_unseal(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    pki_dir = _cluster_pki(args)
    restored = sealed.unseal(pki_dir, args.identity)
    for name in restored:
        print(f"restored: {pki_dir / name}", file=out)
    print(f"{pki_dir}: {len(restored)} keys restored; 'build' now rebuilds the same seeds", file=out)
    return EXIT_OK


def _run_hash_password(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from passlib.hash import sha512_crypt  # libpass keeps the passlib import

    if sys.stdin.isatty():
        password = getpass.getpass("password: ")
        if password != getpass.getpass("again: "):
            raise MaterialError("the two passwords differ")
    else:
        password = sys.stdin.readline().rstrip("\n")
    if not password:
        raise MaterialError("empty password")
    print(sha512_crypt.hash(password), file=out)
    return EXIT_OK


def _size(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MiB"


def _print_table(out: TextIO, rows: list[tuple[str, ...]]) -> None:
    header = ("node", "ip", "cert expires", "seed.iso")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip(),
              file=out)
