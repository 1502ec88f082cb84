"""``matforge cluster submit|status|logs|stop|list|template``: run pre-training as Ray jobs on a cluster.

``submit`` sends a command, usually ``matforge pretrain ...``, to a Ray cluster's job server and,
by default, follows it: its logs stream to stdout until it ends, and the exit status is the job's
(0 SUCCEEDED, 1 FAILED, 3 STOPPED; 2 for errors before or around the job, such as an unreachable
address or a refused token; 130 after Ctrl-C, which stops following, not the job). ``--no-wait``
prints the submission id and returns at once. The submission id alone goes to stdout first, so
``ID=$(matforge cluster submit --no-wait -- ...)`` works.

The address comes from ``--address``, else ``RAY_API_SERVER_ADDRESS``, else ``RAY_ADDRESS`` (see
:mod:`matforge.cluster.address`); token authentication from ``RAY_AUTH_MODE=token`` with the token in
``RAY_AUTH_TOKEN``, a file named by ``RAY_AUTH_TOKEN_PATH``, or ``~/.ray/auth_token``
(:mod:`matforge.cluster.auth`). Ray is imported only when a command runs.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable

ADDRESS_HELP = ("the cluster's job server: http://HEAD:8265 (the dashboard), HEAD:6379 (the GCS), ray://HEAD:10001; "
                "default: $RAY_API_SERVER_ADDRESS, else $RAY_ADDRESS, else a cluster started on this machine")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "cluster", help="submit pre-training to a Ray cluster as a job; follow, query, stop it; cluster templates",
        description="Run matforge pretrain on a Ray cluster (ray up, KubeRay, Slurm) through its job server. "
                    "Token authentication: RAY_AUTH_MODE=token with RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or "
                    "~/.ray/auth_token.")
    group = parser.add_subparsers(dest="cluster_command", metavar="SUBCOMMAND")
    parser.set_defaults(func=lambda args: parser.print_help())

    p = group.add_parser(
        "submit", help="submit a command (matforge pretrain ...) as a Ray job",
        usage="matforge cluster submit [options] -- matforge pretrain --config NAME [KEY=VALUE ...]",
        description="Submit the command after -- as a Ray job. By default follow it: stream its logs until it "
                    "ends and exit with its status (0 SUCCEEDED, 1 FAILED, 3 STOPPED; Ctrl-C stops following, "
                    "the job keeps running). --no-wait: print the submission id and return.")
    _address_option(p)
    p.add_argument("--runtime-env", metavar="FILE", help="Ray runtime env as YAML or JSON (working_dir, pip, env_vars, ...)")
    p.add_argument("--working-dir", metavar="DIR", help="directory uploaded to the cluster; the command runs in it")
    p.add_argument("--pip", metavar="PKG", action="append", default=[],
                   help="pip requirement installed for the job (repeatable)")
    p.add_argument("--env", metavar="KEY=VALUE", action="append", default=[],
                   help="environment variable for the job and its workers (repeatable)")
    p.add_argument("--entrypoint-num-cpus", metavar="N", type=float, default=None,
                   help="CPUs reserved for the command itself (default 0: it runs on the head node)")
    p.add_argument("--entrypoint-num-gpus", metavar="N", type=float, default=None,
                   help="GPUs reserved for the command itself (default 0)")
    p.add_argument("--submission-id", metavar="ID", help="the job's id (default: one Ray makes up)")
    wait = p.add_mutually_exclusive_group()
    wait.add_argument("--no-wait", dest="follow", action="store_false", help="return right after submitting")
    wait.add_argument("--follow", dest="follow", action="store_true",
                      help="stream the logs until the job ends, exit with its status (the default)")
    p.set_defaults(follow=True)
    p.add_argument("entrypoint", nargs=argparse.REMAINDER, metavar="-- COMMAND ...",
                   help="the command the job runs, after --")
    p.set_defaults(func=_guarded(run_submit))

    p = group.add_parser("status", help="a job's status and message",
                         description="Print a job's status, message, entry point and times (exit 0 when it could be read).")
    p.add_argument("submission_id", metavar="ID")
    _address_option(p)
    p.set_defaults(func=_guarded(run_status))

    p = group.add_parser("logs", help="a job's logs (--follow: until it ends)",
                         description="Print a job's logs; with --follow stream them until the job ends and exit "
                                     "with its status (0 SUCCEEDED, 1 FAILED, 3 STOPPED).")
    p.add_argument("submission_id", metavar="ID")
    p.add_argument("--follow", action="store_true", help="stream until the job ends; exit with its status")
    _address_option(p)
    p.set_defaults(func=_guarded(run_logs))

    p = group.add_parser("stop", help="stop a job", description="Ask a running job to stop.")
    p.add_argument("submission_id", metavar="ID")
    _address_option(p)
    p.set_defaults(func=_guarded(run_stop))

    p = group.add_parser("list", help="the cluster's submitted jobs", description="List the submitted jobs, oldest first.")
    _address_option(p)
    p.set_defaults(func=_guarded(run_list))

    p = group.add_parser(
        "template", help="write a cluster definition (ray up, KubeRay, Slurm) to edit",
        description="Print a packaged cluster definition, or write it with --out. --list names them.")
    p.add_argument("name", nargs="?", metavar="NAME", help="template name (see --list)")
    p.add_argument("--list", action="store_true", help="list the templates")
    p.add_argument("--out", metavar="FILE", help="write to FILE (or into a directory) instead of printing")
    p.add_argument("--force", action="store_true", help="overwrite an existing FILE")
    p.set_defaults(func=_guarded(run_template))


def _address_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", metavar="URL", default=None, help=ADDRESS_HELP)


def _guarded(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """``command`` with :class:`ClusterError` printed as one ``matforge: error:`` line (exit 2)."""

    def run(args: argparse.Namespace) -> int:
        from matforge.cluster.errors import ClusterError

        try:
            return command(args)
        except ClusterError as err:
            print(f"matforge: error: {err}", file=sys.stderr)
            return 2

    return run


def _connect(args: argparse.Namespace) -> Any:
    from matforge.cluster.address import resolve_address
    from matforge.cluster.submit import connect

    return connect(resolve_address(args.address))


def _again(args: argparse.Namespace, server: Any, words: str) -> str:
    """A follow-up command line, with ``--address`` when the address came from it."""
    address = f" --address {server.url}" if args.address else ""
    return f"matforge cluster {words}{address}"


def run_submit(args: argparse.Namespace) -> int:
    from matforge.cluster.errors import ClusterError
    from matforge.cluster.runtime_env import build_runtime_env, validate_runtime_env
    from matforge.cluster.submit import submit_job

    entrypoint = list(args.entrypoint)
    if entrypoint[:1] == ["--"]:
        entrypoint = entrypoint[1:]
    if not entrypoint:
        raise ClusterError("no command to run: give it after --, e.g. "
                           "matforge cluster submit -- matforge pretrain --config efs")
    runtime_env = build_runtime_env(args.runtime_env, args.working_dir, args.pip, args.env)
    origin = f"runtime env file {args.runtime_env}" if args.runtime_env else "the runtime env"
    validate_runtime_env(runtime_env, origin)
    server = _connect(args)
    job_id = submit_job(server, entrypoint, runtime_env, args.submission_id,
                        args.entrypoint_num_cpus, args.entrypoint_num_gpus)
    print(job_id, flush=True)
    print(f"matforge: submitted to {server.url}; logs: {_again(args, server, 'logs ' + job_id + ' --follow')}; "
          f"stop: {_again(args, server, 'stop ' + job_id)}", file=sys.stderr, flush=True)
    if not args.follow:
        return 0
    return _follow(args, server, job_id)


def _follow(args: argparse.Namespace, server: Any, job_id: str) -> int:
    from matforge.cluster.submit import exit_code, follow, status_line

    try:
        info = follow(server, job_id)
    except KeyboardInterrupt:
        print(f"\nmatforge: stopped following; job {job_id} keeps running "
              f"({_again(args, server, 'logs ' + job_id + ' --follow')}; {_again(args, server, 'stop ' + job_id)})",
              file=sys.stderr)
        return 130
    print(f"matforge: job {status_line(info)}", file=sys.stderr, flush=True)
    return exit_code(info.status)


def run_status(args: argparse.Namespace) -> int:
    from matforge.cluster.submit import job_info

    info = job_info(_connect(args), args.submission_id)
    for key, value in describe_job(info):
        print(f"{key:<14s}{value}")
    return 0


def describe_job(info: Any) -> list[tuple[str, str]]:
    """``(label, value)`` rows for ``matforge cluster status``."""
    from matforge.cluster.submit import status_name

    message = (getattr(info, "message", None) or "").strip()
    rows = [("submission id", str(getattr(info, "submission_id", None) or "-")),
            ("status", status_name(info.status)),
            ("message", message.splitlines()[0] if message else "-"),
            ("entrypoint", str(getattr(info, "entrypoint", "") or "-")),
            ("driver node", str(getattr(info, "driver_node_id", None) or "-")),
            ("started", _when(getattr(info, "start_time", None))),
            ("ended", _when(getattr(info, "end_time", None)))]
    exit_status = getattr(info, "driver_exit_code", None)
    if exit_status is not None:
        rows.append(("exit code", str(exit_status)))
    return rows


def _when(ms: int | None) -> str:
    if not ms:
        return "-"
    import datetime

    return datetime.datetime.fromtimestamp(ms / 1000).isoformat(sep=" ", timespec="seconds")


def run_logs(args: argparse.Namespace) -> int:
    from matforge.cluster.submit import job_logs

    server = _connect(args)
    if args.follow:
        return _follow(args, server, args.submission_id)
    sys.stdout.write(job_logs(server, args.submission_id))
    sys.stdout.flush()
    return 0


def run_stop(args: argparse.Namespace) -> int:
    from matforge.cluster.submit import job_info, status_line, stop_job

    server = _connect(args)
    if stop_job(server, args.submission_id):
        print(f"stop requested for job {args.submission_id}")
    else:
        print(f"job {status_line(job_info(server, args.submission_id))} (it had already ended)")
    return 0


def run_list(args: argparse.Namespace) -> int:
    from matforge.cluster.submit import status_name, list_jobs

    jobs = list_jobs(_connect(args))
    if not jobs:
        print("no submitted jobs")
        return 0
    rows = [("SUBMISSION ID", "STATUS", "STARTED", "ENTRYPOINT")]
    for job in jobs:
        entry = str(getattr(job, "entrypoint", "") or "")
        rows.append((job.submission_id, status_name(job.status), _when(getattr(job, "start_time", None)),
                     entry if len(entry) <= 70 else entry[:69] + "…"))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print("  ".join([cell.ljust(width) for cell, width in zip(row, widths)] + [row[3]]).rstrip())
    return 0


def run_template(args: argparse.Namespace) -> int:
    from matforge.cluster.errors import ClusterError

    try:
        from matforge.cluster import templates
    except ImportError as err:
        raise ClusterError(f"the cluster templates are not available in this install ({err})") from None
    if args.list:
        describe = getattr(templates, "describe", None)
        for name in templates.list_templates():
            print(f"{name:<20s}{describe(name) if describe else ''}".rstrip())
        return 0
    if not args.name:
        raise ClusterError("name a template (matforge cluster template --list shows them): "
                           + ", ".join(templates.list_templates()))
    try:
        if args.out:
            written = templates.write_template(args.name, args.out, force=args.force)
            print(f"wrote {written}")
        else:
            sys.stdout.write(templates.template_text(args.name))
    except (ValueError, KeyError, FileExistsError) as err:
        raise ClusterError(str(err.args[0]) if err.args else str(err)) from None
    except OSError as err:
        raise ClusterError(f"{args.out}: {err.strerror or err}") from None
    return 0
