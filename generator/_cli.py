"""CLI: argument parsing, exit codes and printing; the only module that prints."""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import io
import os
import re
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from . import __version__, fastpath, fs
from .errors import GeneratorError, MaterialError

# The rest is imported where it is used: a build or plan with nothing to do answers from
# fastpath without cryptography, Jinja, PyYAML or pycdlib.
if TYPE_CHECKING:
    from .build import BuildPlan, Sources
    from .manifest import Manifest
    from .spec import Spec

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
        replay = _fast(args)
        if replay is not None:
            out.write(replay.out)
            err.write(replay.err)
            return EXIT_OK
        code: int = args.run(args, out, err)
        return code
    except GeneratorError as exc:
        for message in exc.messages:
            print(f"error: {printable(message)}", file=err)
        if exc.hint:
            print(f"hint: {printable(exc.hint)}", file=err)
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


def printable(text: str) -> str:
    """One line of text: a hostile value quoted in a message cannot start a line of its own."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


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
    plan = commands.add_parser("plan", help="show what a build would change, per node and file; write nothing")
    plan.add_argument("--spec", type=Path, default=Path("cluster.yaml"))
    plan.add_argument("--out", type=Path, default=Path("output"))
    rotate = commands.add_parser("rotate-ca", help="take the next step of a CA rotation (begin, issue, finish) and "
                                 "build its seeds; see README 'Rotate the CA'")
    rotate.add_argument("step", choices=("begin", "issue", "finish"),
                        help="begin: trust a new CA beside the old; issue: issue every certificate from it; "
                             "finish: trust only the new CA")
    rotate.add_argument("--spec", type=Path, default=Path("cluster.yaml"))
    rotate.add_argument("--out", type=Path, default=Path("output"))
    rotate.add_argument("--dry-run", action="store_true", help="show what the step would change; write nothing")
    for sub in (build, plan, rotate):
        sub.add_argument("--rekey", action="append", default=[], metavar="NAME",
                         help="give this node (or 'admin') a new private key; repeat for several")
        sub.add_argument("--renew", action="store_true",
                         help="reissue every leaf certificate now, keeping the keys")
        sub.add_argument("--allow-downgrade", action="store_true",
                         help="accept etcd.version one minor version down, to roll back an unfinished upgrade")
    build.set_defaults(run=_run_build, step=None)
    plan.set_defaults(run=_run_plan, step=None)
    rotate.set_defaults(run=lambda args, out, err: (_run_plan if args.dry_run else _run_build)(args, out, err))
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


def _plain_args(args: argparse.Namespace) -> list[str]:
    """What of a build's or plan's arguments changes its result, for the fast path's digest."""
    return [str(args.out.resolve())]


def _recordable(args: argparse.Namespace) -> bool:
    """Whether this build or plan may be answered from, or recorded for, the fast path: no flag that asks for work."""
    return not (args.rekey or args.renew or args.allow_downgrade or args.step)


def _fast(args: argparse.Namespace) -> fastpath.Replay | None:
    """The recorded output of a build or plan with nothing to do, or None to run in full."""
    if args.command not in ("build", "plan") or not _recordable(args):
        return None
    return fastpath.lookup(args.command, _plain_args(args), args.spec, args.out, dt.datetime.now(dt.UTC).timestamp())


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _source_date_epoch() -> int | None:
    value = os.environ.get("SOURCE_DATE_EPOCH")
    if value is None:
        return None
    if not re.fullmatch(r"[0-9]{1,20}", value):
        raise MaterialError(f"SOURCE_DATE_EPOCH: {value!r} is not a whole number of seconds")
    return int(value)


def _read_spec(spec_path: Path, err: TextIO | None = None) -> Spec:
    """The validated spec; its warnings go to `err` when given."""
    from .spec import load_spec

    spec, warnings = load_spec(fs.read_spec_text(spec_path), base_dir=spec_path.parent, source=str(spec_path))
    for warning in warnings if err is not None else []:
        print(f"warning: {printable(warning)}", file=err)
    return spec


def _cluster_root(args: argparse.Namespace, spec: Spec) -> Path:
    if args.out.exists() and not args.out.is_dir():
        raise MaterialError(f"--out: {args.out} is not a directory")
    root: Path = args.out / spec.name
    return root


def _run_check(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from .build import load_sources

    spec = _read_spec(args.spec, err)
    load_sources(spec)
    print(f"{args.spec}: cluster {spec.name}, {len(spec.nodes)} members, etcd "
          f"{spec.etcd.version}: ok", file=out)
    return EXIT_OK


def _plan(args: argparse.Namespace, spec: Spec, root: Path, sources: Sources | None = None) -> BuildPlan:
    from .build import load_inputs, plan_build
    from .render import make_environment

    epoch = _source_date_epoch()
    inputs = load_inputs(spec, root, sources)
    return plan_build(spec, inputs, make_environment(), _now(), epoch, frozenset(args.rekey), args.renew,
                      args.allow_downgrade, args.step)


class _Tee(io.StringIO):
    """Writes through to a stream and keeps a copy, for the fast path's record."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self.stream = stream

    def write(self, text: str) -> int:
        self.stream.write(text)
        return super().write(text)


def _run_build(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    from . import keygen
    out, err = _Tee(stdout), _Tee(stderr)
    spec = _read_spec(args.spec, err)
    spec_warnings = err.getvalue()
    root = _cluster_root(args, spec)
    _source_date_epoch()
    # The keys this build will likely make are made in other processes while it reads and
    # checks its inputs; a guess that is off costs a key too many or one made later.
    names = ["ca", "admin", *(node.name for node in spec.nodes), *(client.name for client in spec.clients)]
    missing = [n for n in names if not (root / "pki" / f"{n}.key").exists()]
    with keygen.keys_made_ahead(spec.pki.key_type.value, len(missing) + len(args.rekey)):
        from . import manifest
        from .build import apply_plan, load_sources, recover

        # Every input problem is reported before any directory is made.
        previous = manifest.parse_manifest(fs.read_optional(root / manifest.NAME, manifest.NAME))
        sources = load_sources(spec, previous.bundle_sha256)
        created = fs.make_dirs(root, {})
        with fs.locked(root, exclusive=True):
            try:
                fastpath.forget(root)
                resumed, step = recover(root)
                if resumed:
                    print(f"completed the run that was interrupted{f' (rotate-ca {step})' if step else ''}",
                          file=out)
                    if step is not None and step == args.step:
                        args.step = None  # its step is taken: this run builds on it
                plan = _plan(args, spec, root, sources)
                removed = apply_plan(root, plan)
            except BaseException:
                fs.remove_empty(created)  # only while holding the lock: another run may be about to use them
                raise
            _report_build(plan, root, removed, out, err)
            if not removed and _written(plan) == 0 and _recordable(args):
                _record(args, spec, plan, root, spec_warnings, out.getvalue(), err.getvalue())
    return EXIT_OK


def _record(args: argparse.Namespace, spec: Spec, plan: BuildPlan, root: Path, spec_warnings: str, out: str,
            err: str) -> None:
    """Record a build that changed nothing, with what build and plan print, for the fast path."""
    plan_out, plan_err = io.StringIO(), io.StringIO(spec_warnings)
    plan_err.seek(0, io.SEEK_END)
    _report_plan(plan, root, plan_out, plan_err)
    fastpath.record(root, _plain_args(args), args.spec, _input_files(spec), _renew_at(plan),
                    {"build": fastpath.Replay(out, err), "plan": fastpath.Replay(plan_out.getvalue(),
                                                                               plan_err.getvalue())})


def _written(plan: BuildPlan) -> int:
    from .build import FileStatus

    return (len(plan.changed) + (plan.manifest_status is not FileStatus.UNCHANGED) + len(plan.deletes)
            + len(plan.sealed_moves))


def _input_files(spec: Spec) -> list[Path]:
    """The files besides the spec that a build reads from outside the output tree."""
    paths = [spec.etcd.bundle] if spec.etcd.bundle else []
    for source in (spec.pki.ca, spec.pki.ca_next):
        if source is not None:
            paths += [source.cert, source.key]
    if spec.etcd.restore is not None:
        paths.append(spec.etcd.restore.snapshot)
    return paths


def _renew_at(plan: BuildPlan) -> float:
    """When a build must look again: the first certificate to come within renew_before_days of expiry."""
    margin = dt.timedelta(days=plan.spec.pki.renew_before_days)
    certs = [ca.cert for ca in plan.pki.trusted] + [c.cert for c in plan.pki.leaves.values()]
    return min((c.not_valid_after_utc - margin).timestamp() for c in certs)


def _report_build(plan: BuildPlan, root: Path, removed: list[str], out: TextIO, err: TextIO) -> None:
    from .render import SEED_ISO

    for rel in removed:
        print(f"removed {rel}: left by a run that was killed", file=out)
    for event in plan.pki.events:
        print(f"pki: {event}", file=out)
    for source, target in plan.sealed_moves:
        print(f"moved pki/{source}.age to pki/{target}.age: the sealed copy follows its key", file=out)
    for rel in plan.deletes:
        print(f"deleted {rel}", file=out)
    total = len(plan.files) + 1
    written = _written(plan)
    print(f"{root}: {written} of {total} files written" + ("" if written else " (nothing changed)"), file=out)
    sizes = {f.path.split("/")[0]: f.size for f in plan.files if f.path.endswith(f"/{SEED_ISO}")}
    _print_table(out, [(node.name, str(node.ip),
                        f"{plan.pki.leaves[node.name].cert.not_valid_after_utc:%Y-%m-%d}",
                        _size(sizes[node.name])) for node in plan.spec.nodes])
    print(f"check the cluster: cd {root / 'pki'} && set -a && . ./etcdctl.env && set +a && "
          "etcdctl endpoint health", file=out)
    _print_notes(plan, out, err)


def _print_notes(plan: BuildPlan, out: TextIO, err: TextIO) -> None:
    for warning in plan.warnings:
        print(f"warning: {printable(warning)}", file=err)
    for note in plan.notes:
        print(note, file=out)


def _run_plan(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    spec = _read_spec(args.spec, err)
    root = _cluster_root(args, spec)
    if root.is_dir():
        with fs.locked(root, exclusive=False):
            plan = _plan(args, spec, root)
    else:
        plan = _plan(args, spec, root)
    _report_plan(plan, root, out, err)
    return EXIT_OK


def _report_plan(plan: BuildPlan, root: Path, out: TextIO, err: TextIO) -> None:
    from . import manifest
    from .build import FileStatus
    from .pki import Change

    changed = plan.changed
    for event in plan.pki.events:
        if event.change is not Change.REUSED:
            print(f"pki: {event}", file=out)
    width = max((len(f.path) for f in changed), default=0)
    for planned in changed:
        print(f"  {planned.path.ljust(width)}  {planned.status}", file=out)
    if plan.manifest_status is not FileStatus.UNCHANGED:
        print(f"  {manifest.NAME.ljust(width)}  {plan.manifest_status}", file=out)
    for source, target in plan.sealed_moves:
        print(f"  pki/{target}.age  move (from pki/{source}.age)", file=out)
    for rel in plan.deletes:
        print(f"  {rel.ljust(width)}  {FileStatus.DELETE}", file=out)
    counts = {k: sum(1 for f in changed if f.status is k) for k in FileStatus}
    print(f"{root}: {counts[FileStatus.CREATE]} to create, {counts[FileStatus.UPDATE]} to update, "
          f"{counts[FileStatus.MODE]} to chmod, " + (f"{len(plan.deletes)} to delete, " if plan.deletes else "")
          + f"{len(plan.files) - len(changed)} unchanged", file=out)
    _print_notes(plan, out, err)


def _run_verify(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from . import external
    from .build import load_bundle
    from .render import SEED_ISO, make_environment
    from .verify import Finding, Tree, verify_tree

    spec = _read_spec(args.spec)
    root = _cluster_root(args, spec)
    if not root.is_dir():
        raise MaterialError(f"{root}: no output to verify; run a build first")
    if args.fail_days > args.warn_days:
        raise MaterialError("--fail-days must not exceed --warn-days")
    try:
        bundle = load_bundle(spec)
    except MaterialError:
        bundle = None  # a reviewer's checkout may lack the tarball: ISOs are then checked file by file
    with fs.locked(root, exclusive=False), ThreadPoolExecutor(1) as pool:
        disk, dirs, odd = fs.scan(root)
        # cloud-init's schema check runs in a process of its own, beside the rest of verify.
        names = sorted(p for p in disk if p.endswith("/user-data"))
        schema = pool.submit(external.cloud_init_schema, [root / name for name in names])
        small = [p for p in disk if not p.endswith(f"/{SEED_ISO}")]
        tree = Tree(files=fs.read_files(root, small), disk=disk, dirs=dirs, odd=odd,
                    read_large=lambda rel: fs.read_regular(root / rel, fs.LIMITS["bundle"] * 2, rel) or b"",
                    git_tracked=external.git_tracked(root))
        found = verify_tree(spec, tree, _now(), args.warn_days, args.fail_days, make_environment(), bundle)
        problems = schema.result()
        found += [Finding(name, problem) for name in names if (problem := problems[root / name])]
    for finding in found:
        print(f"{'error' if finding.error else 'warning'}: {printable(str(finding))}", file=err)
    errors = sum(f.error for f in found)
    print(f"{root}: {len(disk)} files checked, {errors} errors, {len(found) - errors} warnings",
          file=out)
    return EXIT_ERROR if errors else EXIT_OK


def _cluster_pki(args: argparse.Namespace) -> tuple[Path, Manifest]:
    from . import manifest

    spec = _read_spec(args.spec)
    root = _cluster_root(args, spec)
    previous = manifest.parse_manifest(fs.read_optional(root / manifest.NAME, manifest.NAME))
    if not previous.files:
        raise MaterialError(f"{root / manifest.NAME}: missing; run a build first (or clone the cluster's repository)")
    return root / "pki", previous


def _run_seal(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from . import sealed

    pki_dir, previous = _cluster_pki(args)
    with fs.locked(pki_dir.parent, exclusive=True):
        result = sealed.seal(pki_dir, args.recipient, previous)
    for name in result.sealed:
        print(f"sealed: {pki_dir / name}", file=out)
    print(f"{pki_dir}: {len(result.sealed)} keys sealed, {len(result.unchanged)} unchanged; "
          f"commit the .key.age files and {sealed.INDEX}", file=out)
    return EXIT_OK


def _run_unseal(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from . import sealed

    pki_dir, previous = _cluster_pki(args)
    with fs.locked(pki_dir.parent, exclusive=True):
        restored = sealed.unseal(pki_dir, args.identity, previous)
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
