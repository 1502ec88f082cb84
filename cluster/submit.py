"""Submit a command (``matforge pretrain ...``) to a Ray cluster as a job, and follow, query or stop it.

Through Ray's ``JobSubmissionClient`` (HTTP to the dashboard's job server on the head):

* :func:`connect` resolves the address (:mod:`matforge.cluster.address`), adds the token header when
  token authentication is on (:mod:`matforge.cluster.auth`) and checks that the job server answers;
* :func:`submit_job` sends the entry point with its runtime env and entry-point resources and
  returns the submission id;
* :func:`follow` streams the job's logs until it ends (reconnecting by polling if the stream
  drops) and returns its final details; :func:`exit_code` maps its status to the exit status;
* :func:`job_info`, :func:`list_jobs`, :func:`stop_job`, :func:`job_logs` are the queries.

Every failure Ray reports (unreachable server, 401/403 from token authentication, an unknown
submission id, a runtime env Ray refuses) becomes a one-line
:class:`~matforge.cluster.errors.ClusterError` (:func:`explain`).

The entry point runs on the head node unless entry-point resources are asked for
(``entrypoint_num_cpus``/``_gpus`` above 0); there ``RAY_ADDRESS`` names the cluster, which
``matforge pretrain`` joins.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shlex
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, TextIO

from matforge.cluster.address import API_SERVER_ENV, RAY_ADDRESS_ENV, ClusterAddress, job_server_url
from matforge.cluster.auth import auth_failure_message, auth_headers
from matforge.cluster.errors import ClusterError, one_line

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
EXIT_CODES = {"SUCCEEDED": 0, "FAILED": 1, "STOPPED": 3}
NOT_ENDED_EXIT = 4  # the job had not ended when following stopped (only after lost contact)
ERROR_EXIT = 2  # usage, connection, authentication: the ``matforge: error:`` line

_STATUS_CODE = re.compile(r"status code (\d{3}): ?(.*)", re.S)


def exit_code(status: Any) -> int:
    """Exit status for a job status: SUCCEEDED 0, FAILED 1, STOPPED 3, not ended (PENDING, RUNNING) 4."""
    return EXIT_CODES.get(status_name(status), NOT_ENDED_EXIT)


def status_name(status: Any) -> str:
    return str(getattr(status, "value", status)).upper()


@dataclass
class JobServer:
    """A connected ``JobSubmissionClient`` and the URL it talks to (for messages)."""

    client: Any
    url: str
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ)


@contextlib.contextmanager
def _address_variables_cleared() -> Iterator[None]:
    """Unset ``RAY_API_SERVER_ADDRESS``/``RAY_ADDRESS`` for a moment: ``JobSubmissionClient`` lets them
    override the URL it is given, and the URL here already is the resolved address."""
    saved = {name: os.environ.pop(name) for name in (API_SERVER_ENV, RAY_ADDRESS_ENV) if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def connect(address: ClusterAddress, environ: Mapping[str, str] | None = None) -> JobServer:
    """A client for the job server at ``address``; raises :class:`ClusterError` when it cannot be had."""
    environ = os.environ if environ is None else environ
    headers = auth_headers(environ)  # a missing token is an error before any request
    url = job_server_url(address)
    try:
        from ray.job_submission import JobSubmissionClient
    except ImportError as err:
        raise ClusterError(f"submitting jobs needs Ray ({err}); pip install 'matforge[cluster]'") from None
    for name in ("ray.dashboard.modules.job.sdk", "ray.dashboard.modules.dashboard_sdk"):
        logging.getLogger(name).setLevel(logging.WARNING)  # they set INFO: "WebSocket closed ..." on stderr
    with _address_variables_cleared(), translate_errors(url, environ=environ):
        client = JobSubmissionClient(url, headers=headers or None)
    return JobServer(client, url, environ)


def explain(exc: BaseException, url: str, job_id: str | None = None,
            environ: Mapping[str, str] | None = None) -> str | None:
    """One line for an error Ray's client raised while talking to ``url``; ``None`` if it is not one of them."""
    status, text = _http_status(exc)
    if status in (401, 403):
        return auth_failure_message(status, url, environ)
    if status == 404 and job_id is not None:
        return f"no job {job_id!r} on the Ray cluster at {url} (matforge cluster list shows the submission ids)"
    message = str(exc)
    if "Version check returned 404" in message:
        return f"{url} answers HTTP but is not a Ray dashboard (no /api/version); give the dashboard's URL, http://HEAD:8265"
    if "require the ray[default]" in message:
        return "submitting jobs needs the dashboard client in ray[default]; pip install 'matforge[cluster]'"
    if status is not None:
        return f"the Ray job server at {url} answered {status}: {one_line(text)}"
    if _is_connection_error(exc):
        return f"lost the connection to the Ray job server at {url}: {one_line(message) or type(exc).__name__}"
    return None


def _http_status(exc: BaseException) -> tuple[int | None, str]:
    """The HTTP status (and text) an error of Ray's client carries, if any."""
    status = getattr(exc, "status", None)  # aiohttp's WSServerHandshakeError / ClientResponseError
    if isinstance(status, int) and 100 <= status < 600:
        return status, str(getattr(exc, "message", "") or exc)
    message = str(exc)
    if type(exc).__name__ == "AuthenticationError":  # ray.exceptions: "Authentication required|failed: ..."
        return (403 if message.startswith("Authentication failed") else 401), message
    found = _STATUS_CODE.search(message)
    if found and isinstance(exc, RuntimeError):
        return int(found.group(1)), found.group(2).strip().rstrip(".")
    return None, message


def _is_connection_error(exc: BaseException) -> bool:
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    names = {cls.__module__.split(".")[0] + "." + cls.__name__ for cls in type(exc).__mro__}
    return bool(names & {"requests.RequestException", "aiohttp.ClientError"})


@contextlib.contextmanager
def translate_errors(url: str, job_id: str | None = None, environ: Mapping[str, str] | None = None) -> Iterator[None]:
    """Re-raise the errors :func:`explain` knows as :class:`ClusterError`; others pass unchanged."""
    try:
        yield
    except ClusterError:
        raise
    except Exception as exc:
        message = explain(exc, url, job_id, environ)
        if message is None:
            raise
        raise ClusterError(message, transient=_http_status(exc)[0] is None and _is_connection_error(exc)) from None


def submit_job(server: JobServer, entrypoint: list[str], runtime_env: dict[str, Any] | None = None,
               submission_id: str | None = None, entrypoint_num_cpus: float | None = None,
               entrypoint_num_gpus: float | None = None) -> str:
    """Submit ``entrypoint`` (argv words, shell-quoted here) and return the submission id."""
    if not entrypoint:
        raise ClusterError("no entry point: give the command after --, e.g. -- matforge pretrain --config efs")
    for name, value in (("--entrypoint-num-cpus", entrypoint_num_cpus), ("--entrypoint-num-gpus", entrypoint_num_gpus)):
        if value is not None and value < 0:
            raise ClusterError(f"{name} {value:g}: must be 0 or more")
    with translate_errors(server.url, environ=server.environ):
        try:
            return server.client.submit_job(
                entrypoint=shlex.join(entrypoint), runtime_env=runtime_env or None, submission_id=submission_id,
                entrypoint_num_cpus=entrypoint_num_cpus, entrypoint_num_gpus=entrypoint_num_gpus)
        except RuntimeError as exc:
            status, text = _http_status(exc)
            if submission_id and status is not None and "already exists" in text:
                raise ClusterError(f"submission id {submission_id!r} is taken on the Ray cluster at {server.url}; "
                                   "choose another (or leave --submission-id out)") from None
            raise
        except (ValueError, TypeError) as exc:  # the runtime env, as Ray checks it before sending
            raise ClusterError(f"runtime env: {one_line(str(exc))}") from None


def job_info(server: JobServer, job_id: str) -> Any:
    """The job's details (``status``, ``message``, ``entrypoint``, times in ms, ...)."""
    with translate_errors(server.url, job_id, server.environ):
        return server.client.get_job_info(job_id)


def job_logs(server: JobServer, job_id: str) -> str:
    """All of the job's logs so far."""
    with translate_errors(server.url, job_id, server.environ):
        return server.client.get_job_logs(job_id)


def list_jobs(server: JobServer) -> list[Any]:
    """The cluster's submitted jobs (drivers started by hand are left out), oldest first."""
    with translate_errors(server.url, environ=server.environ):
        jobs = server.client.list_jobs()
    submitted = [job for job in jobs if getattr(job, "submission_id", None)]
    return sorted(submitted, key=lambda job: getattr(job, "start_time", None) or 0)


def stop_job(server: JobServer, job_id: str) -> bool:
    """Ask the job to stop; False when it had already ended."""
    with translate_errors(server.url, job_id, server.environ):
        return bool(server.client.stop_job(job_id))


def status_line(info: Any) -> str:
    """``ID STATUS: message`` with the message's first line (no message: just ``ID STATUS``)."""
    message = (getattr(info, "message", None) or "").strip().splitlines()
    head = f"{getattr(info, 'submission_id', None) or getattr(info, 'job_id', '?')} {status_name(info.status)}"
    return f"{head}: {message[0]}" if message else head


async def _stream(client: Any, job_id: str, write: Callable[[str], None]) -> None:
    async for chunk in client.tail_job_logs(job_id):
        write(chunk)


def follow(server: JobServer, job_id: str, out: TextIO | None = None, poll_s: float = 2.0,
           patience_s: float = 60.0, log: TextIO | None = None) -> Any:
    """Print the job's logs to ``out`` as they come, until the job ends; return its final details.

    The logs stream over a websocket. Should the stream end or break while the job still runs (a
    restarted dashboard, a network blip), following goes on by polling the full logs every
    ``poll_s`` and printing what is new; contact lost for longer than ``patience_s`` raises
    :class:`ClusterError`. Interrupting (Ctrl-C) leaves the job running.
    """
    out = sys.stdout if out is None else out
    log = sys.stderr if log is None else log
    job_info(server, job_id)  # an unknown id is a clean "no job" error, not a refused websocket
    printed = 0

    def write(text: str) -> None:
        nonlocal printed
        out.write(text)
        out.flush()
        printed += len(text)

    streamed_to_end = False
    try:
        with translate_errors(server.url, job_id, server.environ):
            asyncio.run(_stream(server.client, job_id, write))
        streamed_to_end = True
    except ClusterError as err:
        if not err.transient:
            raise
        print(f"matforge: log stream interrupted ({err}); polling", file=log, flush=True)
    except RuntimeError as err:  # Ray's "WebSocket connection closed unexpectedly"
        print(f"matforge: log stream interrupted ({one_line(str(err))}); polling", file=log, flush=True)

    last_contact = time.monotonic()
    while True:
        try:
            info = job_info(server, job_id)
            if not streamed_to_end or status_name(info.status) not in TERMINAL:
                text = job_logs(server, job_id)
                if len(text) > printed:
                    write(text[printed:])
            last_contact = time.monotonic()
        except ClusterError as err:
            if not err.transient or time.monotonic() - last_contact > patience_s:
                raise
            time.sleep(poll_s)
            continue
        if status_name(info.status) in TERMINAL:
            return info
        time.sleep(poll_s)
