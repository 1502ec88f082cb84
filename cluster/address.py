"""Where the Ray job server is: the address from the command line or the environment, made a URL.

Which address (the precedence of Ray's own ``ray job`` CLI): ``--address``, else
``RAY_API_SERVER_ADDRESS``, else ``RAY_ADDRESS``, else the cluster that ``ray start`` started on this
machine, found the way Ray finds it. Unlike Ray's ``JobSubmissionClient``, where the two environment
variables override an address passed to it, ``--address`` always wins here.

What each form of address becomes (:func:`job_server_url`):

* ``http://HOST:8265`` or ``https://...``: the dashboard, whose job server takes submissions; used as is.
* ``HOST:PORT`` without a scheme: as for Ray, the cluster's GCS address (what ``ray start --head``
  prints, port 6379 by default; inside a Ray job ``RAY_ADDRESS`` has this form). Ray asks that GCS
  where the dashboard is. A ``HOST:PORT`` that answers as a dashboard itself (``GET /api/version``)
  is taken as ``http://HOST:PORT`` instead: a common slip that Ray would answer with a 40 s wait.
* ``ray://HOST:10001``: a Ray Client address; Ray connects a client to read the dashboard URL.
* ``auto``, or no address at all: the cluster ``ray start`` last started on this machine.

Before Ray is asked anything, the host and port are checked to accept a TCP connection within a few
seconds, and so is the dashboard URL found: Ray's HTTP client has no timeout, and a head without the
dashboard otherwise shows up as a bare "connection refused" stack trace.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Callable, Iterator, Literal, Mapping
from urllib.parse import urlsplit

from matforge.cluster.errors import ClusterError

API_SERVER_ENV = "RAY_API_SERVER_ADDRESS"
RAY_ADDRESS_ENV = "RAY_ADDRESS"
DEFAULT_DASHBOARD_PORT = 8265
DEFAULT_GCS_PORT = 6379
CONNECT_TIMEOUT_S = 5.0

AddressKind = Literal["http", "gcs", "client", "auto"]

DASHBOARD_HINT = ("is the head up, with its dashboard? The job server is part of the dashboard: "
                  "ray start --head --dashboard-host=0.0.0.0 with ray[default] installed (pip install 'matforge[cluster]')")


@dataclass(frozen=True)
class ClusterAddress:
    """An address as given (``value``; ``None`` for none) and where it came from (``source``)."""

    value: str | None
    source: str

    @property
    def kind(self) -> AddressKind:
        return address_kind(self.value)

    def describe(self) -> str:
        """``'http://h:8265' (from --address)``, or the local-cluster wording when there is none."""
        if self.value in (None, "", "auto"):
            return "the Ray cluster started on this machine"
        return f"{self.value} (from {self.source})"


def resolve_address(flag: str | None, environ: Mapping[str, str] | None = None) -> ClusterAddress:
    """The address to use: ``flag`` (``--address``), else ``RAY_API_SERVER_ADDRESS``, else ``RAY_ADDRESS``.

    Empty values count as unset. With none of them, the value is ``None`` (find a local cluster).
    """
    environ = os.environ if environ is None else environ
    if flag and flag.strip():
        return ClusterAddress(flag.strip(), "--address")
    for name in (API_SERVER_ENV, RAY_ADDRESS_ENV):
        value = environ.get(name, "").strip()
        if value:
            return ClusterAddress(value, name)
    return ClusterAddress(None, "default")


def address_kind(value: str | None) -> AddressKind:
    """Which form ``value`` has: ``http`` (dashboard URL), ``client`` (ray://), ``gcs`` (HOST:PORT), ``auto``."""
    if value is None or value.strip() in ("", "auto"):
        return "auto"
    text = value.strip()
    if "://" not in text:
        return "gcs"
    scheme = text.split("://", 1)[0].lower()
    if scheme in ("http", "https"):
        return "http"
    if scheme == "ray":
        return "client"
    raise ClusterError(f"address {text!r}: unknown scheme {scheme + '://'!r}; give the dashboard's URL "
                       f"(http://HEAD:{DEFAULT_DASHBOARD_PORT}), the GCS address (HEAD:{DEFAULT_GCS_PORT}) "
                       "or a Ray Client address (ray://HEAD:10001)")


def host_port(text: str, default_port: int) -> tuple[str, int]:
    """``(host, port)`` of ``HOST[:PORT]`` or of a URL (``[v6]:port`` allowed); ``default_port`` if none."""
    netloc = urlsplit(text).netloc if "://" in text else text
    netloc = netloc.rsplit("@", 1)[-1]  # drop user:password@
    try:
        parsed = urlsplit("//" + netloc)
        host, port = parsed.hostname, parsed.port
    except ValueError as err:
        raise ClusterError(f"address {text!r}: {err}") from None
    if not host:
        raise ClusterError(f"address {text!r} names no host")
    return host, port if port is not None else default_port


def check_reachable(host: str, port: int, what: str, timeout_s: float = CONNECT_TIMEOUT_S,
                    hint: str = DASHBOARD_HINT) -> None:
    """Raise :class:`ClusterError` naming ``what`` unless ``host:port`` accepts a TCP connection in time."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return
    except socket.gaierror as err:
        reason = f"cannot resolve host {host!r} ({err.strerror or err})"
    except ConnectionRefusedError:
        reason = "connection refused"
    except (socket.timeout, TimeoutError):
        reason = f"no answer within {timeout_s:g} s"
    except OSError as err:
        reason = err.strerror or str(err)
    raise ClusterError(f"cannot reach {what}: {reason}; {hint}")


def answers_as_dashboard(host: str, port: int, timeout_s: float = 2.0) -> bool:
    """True when ``http://host:port/api/version`` answers like a Ray dashboard (JSON with ``ray_version``).

    A 401/403 answer counts too: a dashboard with token authentication refuses the unauthenticated probe.
    """
    try:
        with urllib.request.urlopen(f"http://{_bracket(host)}:{port}/api/version", timeout=timeout_s) as response:
            answer = json.loads(response.read(65536).decode("utf-8", "replace"))
            return isinstance(answer, dict) and "ray_version" in answer
    except urllib.error.HTTPError as err:
        return err.code in (401, 403) and "token" in err.read(4096).decode("utf-8", "replace").lower()
    except (OSError, ValueError, http.client.HTTPException):  # not HTTP (a gRPC port), not JSON, timed out
        return False


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def job_server_url(address: ClusterAddress, timeout_s: float = CONNECT_TIMEOUT_S) -> str:
    """The HTTP URL of the job server for ``address``, checked to accept connections (see module doc)."""
    kind = address.kind
    where = address.describe()
    if kind == "http":
        url = address.value.strip().rstrip("/")  # type: ignore[union-attr]
        host, port = host_port(url, 443 if url.lower().startswith("https") else 80)
        check_reachable(host, port, f"the Ray job server at {where}", timeout_s)
        return url
    if kind == "gcs":
        host, port = host_port(address.value.strip(), DEFAULT_GCS_PORT)  # type: ignore[union-attr]
        check_reachable(host, port, f"the Ray cluster at {where}", timeout_s,
                        hint="is the head up? A HOST:PORT without http:// is the cluster's GCS address "
                             f"(ray start --head prints it, port {DEFAULT_GCS_PORT}); for the dashboard "
                             f"write http://HOST:{DEFAULT_DASHBOARD_PORT}")
        if answers_as_dashboard(host, port):
            return f"http://{_bracket(host)}:{port}"
        url = _ask_ray(lambda: _gcs_lookup(f"{_bracket(host)}:{port}"), where)
    elif kind == "client":
        host, port = host_port(address.value.strip(), 10001)  # type: ignore[union-attr]
        check_reachable(host, port, f"the Ray Client server at {where}", timeout_s,
                        hint="is the head up with its Ray Client server (ray start --head, port 10001)? "
                             f"The dashboard's URL, http://HEAD:{DEFAULT_DASHBOARD_PORT}, needs no client")
        url = _ask_ray(lambda: _client_lookup(address.value.strip()), where)  # type: ignore[union-attr]
    else:
        url = _ask_ray(lambda: _gcs_lookup(None), where, local=True)
    host, port = host_port(url, 80)
    hint = ("the head runs without the dashboard's job server (ray start --include-dashboard=false, or ray installed "
            "without [default]); restart the head with the dashboard: ray start --head --include-dashboard=true "
            "--dashboard-host=0.0.0.0")
    if _loopback(host) and not (address.value and _loopback(host_port(address.value, 0)[0])):
        hint = (f"the dashboard listens on the head's loopback only (--dashboard-host=127.0.0.1): tunnel to it "
                f"(ssh -L {port}:127.0.0.1:{port} HEAD) and pass --address http://127.0.0.1:{port}; or {hint}")
    check_reachable(host, port, f"the dashboard at {url}, which {where} lists", timeout_s, hint=hint)
    return url.rstrip("/")


def _loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def _gcs_lookup(gcs_address: str | None) -> str:
    from ray.dashboard.utils import ray_address_to_api_server_url

    with _native_stderr_muted():
        return ray_address_to_api_server_url(gcs_address)


@contextlib.contextmanager
def _native_stderr_muted() -> Iterator[None]:
    """Send file descriptor 2 to /dev/null for a moment.

    Ray's C++ GCS client writes its failures (a refused token, a timeout) straight to the process's
    stderr as it goes; the exception raised afterwards says the same, and becomes the one line.
    """
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to mute
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _client_lookup(client_address: str) -> str:
    from ray.dashboard.utils import ray_client_address_to_api_server_url

    with _native_stderr_muted():
        return ray_client_address_to_api_server_url(client_address)


def _ask_ray(lookup: Callable[[], str], where: str, local: bool = False) -> str:
    """Run one of Ray's dashboard-URL lookups; its failures become one-line :class:`ClusterError`\\ s."""
    try:
        return lookup()
    except ImportError as err:
        raise ClusterError(f"finding the job server needs ray[default] ({err}); pip install 'matforge[cluster]'") from None
    except Exception as err:  # Ray raises ConnectionError, ValueError, RpcError, RuntimeError here
        if "InvalidAuthToken" in str(err) or "Unauthenticated" in str(err):
            from matforge.cluster.auth import auth_failure_message, token_auth_enabled

            raise ClusterError(auth_failure_message(403 if token_auth_enabled() else 401, where)) from None
        if local:
            raise ClusterError(
                "no Ray cluster address given (--address http://HEAD:8265, RAY_API_SERVER_ADDRESS or RAY_ADDRESS), "
                f"and looking on this machine: {_gist(err)}") from None
        raise ClusterError(f"cannot find the job server of {where}: {_gist(err)}") from None


def _gist(err: BaseException) -> str:
    """The message of ``err``; of a remote traceback carried in it, only the last line (the error)."""
    text = str(err).strip()
    if "Traceback (most recent call last)" in text:
        return text.splitlines()[-1].strip()
    return text
