"""CLI: argument parsing, exit codes and printing; the only module that prints."""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import io
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from . import __version__, fastpath
from .errors import GeneratorError, MaterialError, printable

# The rest is imported where it is used: a build or plan with nothing to do answers from
# fastpath without cryptography, Jinja, PyYAML or pycdlib.
if TYPE_CHECKING:
    from .build import Options
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
        for warning in exc.warnings:
            print(f"warning: {printable(warning)}", file=err)
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


def main_entry() -> None:
    """Console-script entry point."""
    raise SystemExit(main())


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="etcd-seed",
        description="Generate TLS certificates and cloud-init NoCloud seed ISOs for an etcd cluster.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    spec_only = argparse.ArgumentParser(add_help=False)
    spec_only.add_argument("--spec", type=Path, default=Path("cluster.yaml"),
                           help="cluster definition (default: cluster.yaml)")
    tree = argparse.ArgumentParser(add_help=False, parents=[spec_only])
    tree.add_argument("--out", type=Path, default=Path("output"),
                      help="output root; files go to OUT/<cluster>/ (default: output)")
    work = argparse.ArgumentParser(add_help=False)
    work.add_argument("--rekey", action="append", default=[], metavar="NAME",
                      help="give this node (or 'admin') a new private key; repeat for several")
    work.add_argument("--renew", action="store_true", help="reissue every leaf certificate now, keeping the keys")
    work.add_argument("--allow-downgrade", action="store_true",
                      help="accept etcd.version one minor version down, to roll back an unfinished upgrade")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    build = commands.add_parser("build", parents=[tree, work], help="issue certificates and write every node's seed")
    build.set_defaults(run=_run_build, step=None)
    plan = commands.add_parser("plan", parents=[tree, work],
                               help="show what a build would change, per node and file; write nothing")
    plan.set_defaults(run=_run_plan, step=None)
    rotate = commands.add_parser("rotate-ca", parents=[tree, work],
                                 help="take the next step of a CA rotation (begin, issue, finish) and build its "
                                 "seeds; see docs/operations.md 'Rotate the CA'")
    rotate.add_argument("step", choices=("begin", "issue", "finish"),
                        help="begin: trust a new CA beside the old; issue: issue every certificate from it; "
                             "finish: trust only the new CA")
    rotate.add_argument("--dry-run", action="store_true", help="show what the step would change; write nothing")
    rotate.add_argument("--force", action="store_true",
                        help="issue, finish: go on without asking the cluster whether every node runs the seed of "
                             "the phase before")
    rotate.set_defaults(run=_run_rotate)
    verify = commands.add_parser("verify", parents=[tree], help="check output/ against the spec, the CA, the "
                                 "manifest and CIS 2; exit 1 on any failure")
    verify.add_argument("--warn-days", type=int, default=30, help="warn when a certificate expires sooner")
    verify.add_argument("--fail-days", type=int, default=7, help="fail when a certificate expires sooner")
    verify.set_defaults(run=_run_verify)
    status = commands.add_parser("status", parents=[tree], help="ask the running cluster how it stands against "
                                 "the build: health, versions, certificates served, what to roll next; exit 1 on any "
                                 "problem")
    status.add_argument("--json", action="store_true", help="print the report as JSON, for scripts")
    status.add_argument("--timeout", type=float, default=5.0,
                        help="seconds each node has to answer in full, both ports (default 5)")
    status.set_defaults(run=_run_status)
    seal = commands.add_parser("seal", parents=[tree], help="encrypt the private keys with age, for committing")
    seal.add_argument("--recipient", action="append", default=[], required=True,
                      help="age public key (age1...); repeat for several operators")
    seal.set_defaults(run=_run_seal)
    unseal = commands.add_parser("unseal", parents=[tree], help="decrypt sealed keys with an age identity")
    unseal.add_argument("--identity", type=Path, required=True, help="age identity file (age-keygen)")
    unseal.set_defaults(run=_run_unseal)
    check = commands.add_parser("check", parents=[spec_only], help="validate the spec and its inputs, write nothing")
    check.set_defaults(run=_run_check)
    hasher = commands.add_parser("hash-password",
                                 help="read a password and print its hash for admin.password_hash")
    hasher.set_defaults(run=_run_hash_password)
    return parser


def _options(args: argparse.Namespace) -> Options:
    from .build import Options

    return Options(frozenset(args.rekey), args.renew, args.allow_downgrade, args.step)


def _fast(args: argparse.Namespace) -> fastpath.Replay | None:
    """The recorded output of a build or plan with nothing to do, or None to run in full."""
    if args.command not in ("build", "plan") or args.rekey or args.renew or args.allow_downgrade:
        return None
    return fastpath.lookup(args.command, fastpath.command_args(args.out), args.spec, args.out,
                           dt.datetime.now(dt.UTC).timestamp())


def _read_spec(spec_path: Path, err: TextIO | None = None) -> Spec:
    """The validated spec; its warnings go to `err` when given."""
    from .inputs import read_spec

    spec, warnings = read_spec(spec_path)
    for warning in warnings if err is not None else []:
        print(f"warning: {printable(warning)}", file=err)
    return spec


def _run_check(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from .inputs import load_sources

    spec = _read_spec(args.spec, err)
    load_sources(spec)
    print(f"{args.spec}: cluster {spec.name}, {len(spec.nodes)} members, etcd "
          f"{spec.etcd.version}: ok", file=out)
    return EXIT_OK


def _run_build(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from .build import run

    result = run(args.spec, args.out, _options(args), epoch=os.environ.get("SOURCE_DATE_EPOCH"))
    out.write(result.out)
    err.write(result.err)
    return EXIT_OK


def _run_plan(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from .build import plan

    result = plan(args.spec, args.out, _options(args), epoch=os.environ.get("SOURCE_DATE_EPOCH"))
    out.write(result.out)
    err.write(result.err)
    return EXIT_OK


def _run_rotate(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """A rotation step; issue and finish only once every node runs the seed of the phase before (status)."""
    if args.dry_run or args.step == "begin":
        return (_run_plan if args.dry_run else _run_build)(args, out, err)
    from . import status

    if not args.force and not status.resumes(args.spec, args.out, args.step):
        _run_plan(args, io.StringIO(), io.StringIO())  # the step's own refusals (a phase skipped) come first
        status.confirm_rolled(args.spec, args.out, args.step)
    code = _run_build(args, out, err)
    if args.force:
        print(f"warning: rotate-ca {args.step} --force: the cluster was not asked whether every node runs the seed "
              f"of the phase before; if one does not, {status.ROTATION_RISK[args.step]}", file=err)
    return code


def _run_verify(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from .verify import check

    report = check(args.spec, args.out, args.warn_days, args.fail_days)
    for finding in report.findings:
        print(f"{'error' if finding.error else 'warning'}: {printable(str(finding))}", file=err)
    print(f"{report.root}: {report.files} files checked, {report.errors} errors, "
          f"{len(report.findings) - report.errors} warnings", file=out)
    return EXIT_ERROR if report.errors else EXIT_OK


def _run_status(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    import json

    from . import status

    if not 0 < args.timeout <= 300:
        raise MaterialError("--timeout: must be more than 0 and at most 300 seconds")
    report = status.check(args.spec, args.out, args.timeout)
    if args.json:
        print(json.dumps(report.to_json(), indent=2, sort_keys=True), file=out)
    else:
        out.write(status.render(report))
    return EXIT_ERROR if report.exit_code else EXIT_OK


def _run_seal(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from . import sealed

    pki_dir, result = sealed.seal_cluster(args.spec, args.out, args.recipient)
    for name in result.sealed:
        print(f"sealed: {pki_dir / name}", file=out)
    print(f"{pki_dir}: {len(result.sealed)} keys sealed, {len(result.unchanged)} unchanged; "
          f"commit the .key.age files and {sealed.INDEX}", file=out)
    return EXIT_OK


def _run_unseal(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from . import sealed

    pki_dir, restored = sealed.unseal_cluster(args.spec, args.out, args.identity)
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
