"""``matforge cluster``: where the job server is (flag, environment, forms), in-process and without Ray.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from typing import Any, Iterator

import pytest

from matforge.cli.main import main
from matforge.cluster import submit as submit_module
from matforge.cluster.address import (ClusterAddress, address_kind, host_port, job_server_url,
                                      resolve_address)
from matforge.cluster.errors import ClusterError
from cluster_cli_helpers import closed_port, error_line

# --- the address -------------------------------------------------------------------------------

@pytest.mark.parametrize("flag, environ, expected", [
    ("http://a:8265", {"RAY_API_SERVER_ADDRESS": "http://b:8265", "RAY_ADDRESS": "c:6379"}, ("http://a:8265", "--address")),
    (None, {"RAY_API_SERVER_ADDRESS": "http://b:8265", "RAY_ADDRESS": "c:6379"}, ("http://b:8265", "RAY_API_SERVER_ADDRESS")),
    (None, {"RAY_API_SERVER_ADDRESS": " ", "RAY_ADDRESS": "c:6379"}, ("c:6379", "RAY_ADDRESS")),
    ("", {"RAY_ADDRESS": "c:6379"}, ("c:6379", "RAY_ADDRESS")),
    (None, {}, (None, "default")),
])
def test_address_precedence(flag: str | None, environ: dict[str, str], expected: tuple) -> None:
    found = resolve_address(flag, environ)
    assert (found.value, found.source) == expected


@pytest.mark.parametrize("value, kind", [
    ("http://h:8265", "http"), ("HTTPS://h", "http"), ("h:6379", "gcs"), ("10.0.0.1", "gcs"),
    ("ray://h:10001", "client"), ("auto", "auto"), (None, "auto"), ("", "auto"),
])
def test_address_kinds(value: str | None, kind: str) -> None:
    assert address_kind(value) == kind


def test_unknown_scheme_is_refused() -> None:
    with pytest.raises(ClusterError, match="unknown scheme 'ftp://'"):
        address_kind("ftp://h:1")


def test_host_and_port() -> None:
    assert host_port("http://h:8265/", 80) == ("h", 8265)
    assert host_port("https://user:pw@h", 443) == ("h", 443)
    assert host_port("h", 6379) == ("h", 6379)
    assert host_port("[::1]:7000", 6379) == ("::1", 7000)
    with pytest.raises(ClusterError, match="names no host"):
        host_port("http://:80", 80)


@pytest.mark.parametrize("form", ["http://127.0.0.1:{port}", "127.0.0.1:{port}", "ray://127.0.0.1:{port}"])
def test_closed_port_is_a_one_line_error_without_ray(form: str, capsys: pytest.CaptureFixture[str]) -> None:
    address = form.format(port=closed_port())
    started = time.monotonic()
    assert main(["cluster", "list", "--address", address]) == 2
    assert time.monotonic() - started < 5
    line = error_line(capsys)
    assert f"{address} (from --address): connection refused" in line


def test_unresolvable_host(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cluster", "status", "x", "--address", "http://no-such-host.invalid:8265"]) == 2
    assert "cannot resolve host 'no-such-host.invalid'" in error_line(capsys)


@pytest.fixture()
def fake_dashboard() -> Iterator[int]:
    """An HTTP server on localhost that answers ``/api/version`` as a Ray dashboard does."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            body = json.dumps({"version": "4", "ray_version": "2.60.0"}).encode()
            self.send_response(200 if self.path == "/api/version" else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()


def test_host_port_answering_as_a_dashboard_is_taken_as_its_url(fake_dashboard: int) -> None:
    # Ray would read 127.0.0.1:PORT as a GCS address and wait 40 s for a GCS that is not there
    assert job_server_url(ClusterAddress(f"127.0.0.1:{fake_dashboard}", "--address")) == f"http://127.0.0.1:{fake_dashboard}"
    assert job_server_url(ClusterAddress(f"http://127.0.0.1:{fake_dashboard}/", "RAY_ADDRESS")) == f"http://127.0.0.1:{fake_dashboard}"


def test_ray_lookup_failures_are_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from matforge.cluster.address import _ask_ray

    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)

    def remote_failure() -> str:
        raise ConnectionError("Initialization failure from server:\nTraceback (most recent call last):\n  File \"x.py\", "
                              "line 1, in f\nRuntimeError: Starting Ray client server failed.")

    with pytest.raises(ClusterError) as exc:
        _ask_ray(remote_failure, "ray://h:10001 (from --address)")
    assert str(exc.value) == ("cannot find the job server of ray://h:10001 (from --address): "
                              "RuntimeError: Starting Ray client server failed.")

    def refused() -> str:
        raise RuntimeError("RPC error: InvalidAuthToken: Authentication token is missing or incorrect")

    with pytest.raises(ClusterError, match="requires token authentication"):
        _ask_ray(refused, "h:6379 (from --address)")


def test_address_variables_are_cleared_while_the_client_is_made(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_ADDRESS", "elsewhere:6379")
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", "http://elsewhere:8265")
    import os

    with submit_module._address_variables_cleared():
        assert "RAY_ADDRESS" not in os.environ and "RAY_API_SERVER_ADDRESS" not in os.environ
    assert os.environ["RAY_ADDRESS"] == "elsewhere:6379"
