"""``matforge cluster``, in-process and without a Ray cluster: arguments, address resolution, token
discovery, runtime env files and flags, error lines, exit statuses, following a job (with a fake
client). The real submission path runs against local Ray nodes in test_cluster_loopback.py.
"""

from __future__ import annotations

import http.server
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import pytest

from matforge.cli.main import build_parser, main
from matforge.cluster import submit as submit_module
from matforge.cluster.address import (ClusterAddress, address_kind, host_port, job_server_url,
                                      resolve_address)
from matforge.cluster.auth import auth_failure_message, auth_headers, find_token
from matforge.cluster.errors import ClusterError, one_line
from matforge.cluster.runtime_env import build_runtime_env, load_runtime_env_file, parse_env_assignments
from matforge.cluster.submit import JobServer, exit_code, explain, follow, status_line, translate_errors


def closed_port() -> int:
    """A localhost port nothing listens on (bound, read, released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("matforge: error: "), err
    return lines[0]


# --- arguments ---------------------------------------------------------------------------------

def test_submit_arguments_and_the_command_after_double_dash() -> None:
    args = build_parser().parse_args([
        "cluster", "submit", "--address", "http://head:8265", "--runtime-env", "env.yaml", "--working-dir", ".",
        "--pip", "a==1", "--pip", "b", "--env", "A=1", "--env", "B=x=y", "--entrypoint-num-cpus", "0",
        "--entrypoint-num-gpus", "1", "--submission-id", "run-1", "--no-wait", "--",
        "matforge", "pretrain", "--config", "efs", "--address", "auto", "train.max_steps=5"])
    assert (args.address, args.runtime_env, args.working_dir) == ("http://head:8265", "env.yaml", ".")
    assert args.pip == ["a==1", "b"] and args.env == ["A=1", "B=x=y"]
    assert (args.entrypoint_num_cpus, args.entrypoint_num_gpus, args.submission_id) == (0.0, 1.0, "run-1")
    assert args.follow is False
    # the command's own options (--config, --address) stay the command's
    assert args.entrypoint == ["--", "matforge", "pretrain", "--config", "efs", "--address", "auto", "train.max_steps=5"]


def test_submit_follows_by_default_and_wait_flags_exclude_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    assert parser.parse_args(["cluster", "submit", "--", "true"]).follow is True
    assert parser.parse_args(["cluster", "submit", "--follow", "--", "true"]).follow is True
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["cluster", "submit", "--follow", "--no-wait", "--", "true"])
    assert exc.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_other_subcommands_parse() -> None:
    parser = build_parser()
    assert parser.parse_args(["cluster", "logs", "raysubmit_x", "--follow"]).follow is True
    assert parser.parse_args(["cluster", "status", "raysubmit_x", "--address", "h:6379"]).address == "h:6379"
    assert parser.parse_args(["cluster", "stop", "raysubmit_x"]).submission_id == "raysubmit_x"
    assert parser.parse_args(["cluster", "list"]).cluster_command == "list"
    args = parser.parse_args(["cluster", "template", "slurm", "--out", "x.sbatch", "--force"])
    assert (args.name, args.out, args.force, args.list) == ("slurm", "x.sbatch", True, False)


def test_help_does_not_import_ray() -> None:
    code = ("import sys, contextlib, io\n"
            "from matforge.cli.main import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    for argv in (['--help'], ['cluster', '--help'], ['cluster', 'submit', '--help']):\n"
            "        try:\n"
            "            main(argv)\n"
            "        except SystemExit:\n"
            "            pass\n"
            "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


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


# --- token authentication ----------------------------------------------------------------------

def test_token_sources_in_ray_order(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("from-home\nsecond line\n")
    token_file = tmp_path / "token"
    token_file.write_text("  from-path \n")
    env = {"RAY_AUTH_TOKEN": " from-env\n", "RAY_AUTH_TOKEN_PATH": str(token_file)}
    assert find_token(env, home).value == "from-env"
    assert find_token({"RAY_AUTH_TOKEN": "", "RAY_AUTH_TOKEN_PATH": str(token_file)}, home).value == "from-path"
    found = find_token({}, home)
    assert (found.value, found.source) == ("from-home", str(home / ".ray" / "auth_token"))
    assert find_token({}, tmp_path / "nobody") is None


def test_a_set_token_path_must_hold_a_token(tmp_path: Path) -> None:
    with pytest.raises(ClusterError, match="cannot read the token file"):
        find_token({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "missing")}, tmp_path)
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ClusterError, match="first line is empty"):
        find_token({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "empty")}, tmp_path)


def test_auth_headers_only_in_token_mode(tmp_path: Path) -> None:
    assert auth_headers({"RAY_AUTH_TOKEN": "t"}, tmp_path) == {}  # Ray's client sends none either
    assert auth_headers({"RAY_AUTH_MODE": "disabled", "RAY_AUTH_TOKEN": "t"}, tmp_path) == {}
    assert auth_headers({"RAY_AUTH_MODE": "Token", "RAY_AUTH_TOKEN": "t"}, tmp_path) == {"Authorization": "Bearer t"}
    with pytest.raises(ClusterError, match="RAY_AUTH_MODE=token but no token was found"):
        auth_headers({"RAY_AUTH_MODE": "token"}, tmp_path)


def test_missing_token_fails_before_any_request(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    assert main(["cluster", "list", "--address", f"http://127.0.0.1:{closed_port()}"]) == 2
    assert "no token was found" in error_line(capsys)


def test_auth_failure_lines(tmp_path: Path) -> None:
    url = "http://h:8265"
    missing = auth_failure_message(401, url, {})
    assert "requires token authentication and no token was sent" in missing and "RAY_AUTH_MODE=token" in missing
    refused = auth_failure_message(403, url, {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "x"}, tmp_path)
    assert "refused the token from RAY_AUTH_TOKEN" in refused and "x" not in refused.split("RAY_AUTH_TOKEN")[0][-3:]
    for line in (missing, refused):
        assert "\n" not in line


# --- runtime env -------------------------------------------------------------------------------

def test_runtime_env_file_yaml_and_json(tmp_path: Path) -> None:
    (tmp_path / "env.yaml").write_text("working_dir: .\npip: [tqdm]\nenv_vars: {A: '1'}\n")
    (tmp_path / "env.json").write_text('{"pip": ["tqdm"], "env_vars": {"A": "1"}}')
    (tmp_path / "empty.yaml").write_text("")
    assert load_runtime_env_file(tmp_path / "env.yaml") == {"working_dir": ".", "pip": ["tqdm"], "env_vars": {"A": "1"}}
    assert load_runtime_env_file(tmp_path / "env.json") == {"pip": ["tqdm"], "env_vars": {"A": "1"}}
    assert load_runtime_env_file(tmp_path / "empty.yaml") == {}


@pytest.mark.parametrize("text, message", [
    ("pip: [a\nenv_vars: {}\n", r"env\.bad: does not parse as YAML or JSON: line 2, column 9: expected ','"),
    ('{"pip": ["a"], "env_vars": {"A": "1"}', r"env\.bad: does not parse as YAML or JSON: line \d+, column \d+: "),
    ("- a\n- b\n", r"env\.bad: expected a mapping .* found a list"),
])
def test_runtime_env_file_problems_name_the_file(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "env.bad"
    path.write_text(text)
    with pytest.raises(ClusterError, match=message) as exc:
        load_runtime_env_file(path)
    assert "\n" not in str(exc.value)


def test_bad_runtime_env_file_from_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "env.yaml"
    bad.write_text("env_vars: {A: 1\n")
    assert main(["cluster", "submit", "--runtime-env", str(bad), "--", "true"]) == 2
    assert error_line(capsys).startswith(f"matforge: error: runtime env file {bad}: does not parse")
    assert main(["cluster", "submit", "--runtime-env", str(tmp_path / "nope.yaml"), "--", "true"]) == 2
    assert "nope.yaml: no such file" in error_line(capsys)


def test_flags_merge_into_the_file(tmp_path: Path) -> None:
    (tmp_path / "env.yaml").write_text("working_dir: old\npip: [tqdm, rich]\nenv_vars: {A: '1', B: '2'}\n")
    merged = build_runtime_env(tmp_path / "env.yaml", working_dir=str(tmp_path), pip=["rich", "numpy<3"],
                               env=["B=20", "C="])
    assert merged == {"working_dir": str(tmp_path), "pip": ["tqdm", "rich", "numpy<3"],
                      "env_vars": {"A": "1", "B": "20", "C": ""}}
    assert build_runtime_env(None, pip=["x"]) == {"pip": ["x"]}
    assert build_runtime_env() == {}


def test_pip_forms_merge(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "requirements.txt").write_text("# pinned\ntqdm==4.66  # progress\n\nrich\n")
    (tmp_path / "a.yaml").write_text("pip: requirements.txt\n")
    assert build_runtime_env(tmp_path / "a.yaml", pip=["x"])["pip"] == ["tqdm==4.66", "rich", "x"]
    (tmp_path / "b.yaml").write_text("pip: {packages: [tqdm], pip_check: false}\n")
    assert build_runtime_env(tmp_path / "b.yaml", pip=["x"])["pip"] == {"packages": ["tqdm", "x"], "pip_check": False}
    (tmp_path / "c.yaml").write_text("conda: {dependencies: [python=3.11]}\n")
    with pytest.raises(ClusterError, match="installs packages with conda; --pip cannot be added"):
        build_runtime_env(tmp_path / "c.yaml", pip=["x"])


def test_flag_errors(tmp_path: Path) -> None:
    assert parse_env_assignments(["A=1", "B_2=x=y", "C="]) == {"A": "1", "B_2": "x=y", "C": ""}
    for bad in ("A", "1A=2", "=x", "A-B=1"):
        with pytest.raises(ClusterError, match="expected KEY=VALUE"):
            parse_env_assignments([bad])
    with pytest.raises(ClusterError, match="--working-dir .*: no such directory"):
        build_runtime_env(working_dir=str(tmp_path / "missing"))
    assert build_runtime_env(working_dir="s3://bucket/code.zip") == {"working_dir": "s3://bucket/code.zip"}


def test_ray_checks_the_merged_env(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "env.yaml").write_text("env_vars: {A: 1}\n")  # an int: Ray wants strings
    assert main(["cluster", "submit", "--runtime-env", str(tmp_path / "env.yaml"), "--", "true"]) == 2
    assert "env_vars" in error_line(capsys)
    (tmp_path / "typo.yaml").write_text("env_var: {A: '1'}\n")
    from matforge.cluster.runtime_env import validate_runtime_env

    validate_runtime_env(load_runtime_env_file(tmp_path / "typo.yaml"), "typo.yaml")
    assert "field(s) env_var are not runtime env fields Ray knows" in capsys.readouterr().err


# --- Ray's errors, statuses, following ---------------------------------------------------------

class AuthenticationError(Exception):
    """Stands in for ray.exceptions.AuthenticationError (matched by name)."""


def test_explain_maps_ray_errors_to_one_line() -> None:
    url = "http://h:8265"
    assert explain(RuntimeError("Request failed with status code 404: Job x does not exist."), url, "x") == \
        "no job 'x' on the Ray cluster at http://h:8265 (matforge cluster list shows the submission ids)"
    assert "not a Ray dashboard" in explain(RuntimeError("Version check returned 404. Jobs API ..."), url)
    assert "requires token authentication" in explain(AuthenticationError("Authentication required: ...\n\nmore"), url, environ={})
    assert "refused the token" in explain(AuthenticationError("Authentication failed: Forbidden\n\nmore"), url,
                                          environ={"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "t"})
    assert explain(RuntimeError("Request failed with status code 500: boom\nline two."), url) == \
        "the Ray job server at http://h:8265 answered 500: boom; line two"
    assert explain(ConnectionError("Failed to connect to Ray at address: x."), url).startswith("lost the connection")
    assert explain(KeyError("unrelated"), url) is None
    with pytest.raises(ClusterError) as exc:
        with translate_errors(url):
            raise ConnectionError("reset")
    assert exc.value.transient
    with pytest.raises(KeyError):
        with translate_errors(url):
            raise KeyError("a bug shows its trace")


def test_exit_codes_and_status_line() -> None:
    assert [exit_code(s) for s in ("SUCCEEDED", "FAILED", "STOPPED", "RUNNING", "PENDING")] == [0, 1, 3, 4, 4]
    info = SimpleNamespace(submission_id="s", status=SimpleNamespace(value="FAILED"),
                           message="Job entrypoint command failed with exit code 1, last logs:\nTraceback ...")
    assert exit_code(info.status) == 1
    assert status_line(info) == "s FAILED: Job entrypoint command failed with exit code 1, last logs:"
    assert status_line(SimpleNamespace(submission_id="s", status="RUNNING", message=None)) == "s RUNNING"
    assert one_line("a\n\n  b   c\n") == "a; b c"


class FakeClient:
    """A JobSubmissionClient stand-in: a scripted log stream and status sequence."""

    def __init__(self, chunks: list[str], statuses: list[str], logs: str = "", break_stream: bool = False,
                 interrupt: bool = False) -> None:
        self.chunks, self.statuses, self.logs = chunks, list(statuses), logs
        self.break_stream, self.interrupt = break_stream, interrupt
        self.submitted: dict[str, Any] = {}

    async def tail_job_logs(self, job_id: str):
        for chunk in self.chunks:
            yield chunk
        if self.interrupt:
            raise KeyboardInterrupt
        if self.break_stream:
            raise RuntimeError("WebSocket connection closed unexpectedly with close code 1006")

    def get_job_info(self, job_id: str) -> Any:
        status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        return SimpleNamespace(submission_id=job_id, status=status, message=f"job {status.lower()}")

    def get_job_logs(self, job_id: str) -> str:
        return self.logs

    def submit_job(self, **kwargs: Any) -> str:
        self.submitted = kwargs
        return kwargs.get("submission_id") or "raysubmit_fake"


def test_follow_streams_until_the_end(capsys: pytest.CaptureFixture[str]) -> None:
    client = FakeClient(["a\n", "b\n"], ["RUNNING", "SUCCEEDED"])
    info = follow(JobServer(client, "http://h"), "j", poll_s=0)
    assert info.status == "SUCCEEDED" and capsys.readouterr().out == "a\nb\n"


def test_follow_goes_on_by_polling_when_the_stream_breaks(capsys: pytest.CaptureFixture[str]) -> None:
    client = FakeClient(["a\n"], ["RUNNING", "RUNNING", "RUNNING", "FAILED"], logs="a\nb\nc\n", break_stream=True)
    info = follow(JobServer(client, "http://h"), "j", poll_s=0)
    captured = capsys.readouterr()
    assert info.status == "FAILED"
    assert captured.out == "a\nb\nc\n"  # what the stream printed is not printed twice
    assert "log stream interrupted" in captured.err


def test_follow_gives_up_after_lost_contact() -> None:
    class Gone(FakeClient):
        calls = 0

        def get_job_info(self, job_id: str) -> Any:
            self.calls += 1
            if self.calls == 1:
                return SimpleNamespace(submission_id=job_id, status="RUNNING", message="")
            raise ConnectionError("Failed to connect to Ray at address: http://h.")

    with pytest.raises(ClusterError, match="lost the connection"):
        follow(JobServer(Gone([], ["RUNNING"], break_stream=True), "http://h"), "j", poll_s=0.01, patience_s=0.05,
               log=sys.stdout)


@pytest.fixture()
def fake_cluster(monkeypatch: pytest.MonkeyPatch) -> dict[str, FakeClient]:
    """``matforge cluster`` commands talk to the :class:`FakeClient` put in the returned dict."""
    holder: dict[str, FakeClient] = {}
    monkeypatch.setattr(submit_module, "connect", lambda address, environ=None: JobServer(holder["client"], "http://fake:8265"))
    return holder


@pytest.mark.parametrize("final, code", [("SUCCEEDED", 0), ("FAILED", 1), ("STOPPED", 3)])
def test_submit_and_follow_exits_with_the_job_status(fake_cluster: dict[str, FakeClient], final: str, code: int,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    fake_cluster["client"] = client = FakeClient(["step 1\n"], ["RUNNING", final])
    assert main(["cluster", "submit", "--env", "A=1", "--pip", "tqdm", "--entrypoint-num-gpus", "0.5",
                 "--submission-id", "run-7", "--", "matforge", "pretrain", "data.train=/mnt/a b"]) == code
    out, err = capsys.readouterr()
    assert out.splitlines() == ["run-7", "step 1"]
    assert f"matforge: job run-7 {final}: job {final.lower()}" in err
    assert client.submitted == {"entrypoint": "matforge pretrain 'data.train=/mnt/a b'", "submission_id": "run-7",
                                "runtime_env": {"pip": ["tqdm"], "env_vars": {"A": "1"}},
                                "entrypoint_num_cpus": None, "entrypoint_num_gpus": 0.5}


def test_submit_no_wait_and_interrupted_follow(fake_cluster: dict[str, FakeClient],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    fake_cluster["client"] = FakeClient([], ["PENDING"])
    assert main(["cluster", "submit", "--no-wait", "--", "true"]) == 0
    assert capsys.readouterr().out == "raysubmit_fake\n"
    fake_cluster["client"] = FakeClient(["x\n"], ["RUNNING"], interrupt=True)
    assert main(["cluster", "submit", "--", "true"]) == 130
    assert "stopped following; job raysubmit_fake keeps running" in capsys.readouterr().err


def test_submit_needs_a_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cluster", "submit", "--address", "http://h:1", "--"]) == 2
    assert "no command to run" in error_line(capsys)


def test_status_list_stop(fake_cluster: dict[str, FakeClient], capsys: pytest.CaptureFixture[str]) -> None:
    class Jobs(FakeClient):
        def list_jobs(self) -> list[Any]:
            return [SimpleNamespace(submission_id="b", status="RUNNING", start_time=2_000, entrypoint="matforge pretrain"),
                    SimpleNamespace(submission_id=None, status="SUCCEEDED", start_time=0, entrypoint="python x.py"),
                    SimpleNamespace(submission_id="a", status="FAILED", start_time=1_000, entrypoint="true")]

        def stop_job(self, job_id: str) -> bool:
            return job_id == "b"

    fake_cluster["client"] = Jobs([], ["SUCCEEDED"])
    assert main(["cluster", "list"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[0].split() == ["SUBMISSION", "ID", "STATUS", "STARTED", "ENTRYPOINT"]
    assert [row.split()[:2] for row in rows[1:]] == [["a", "FAILED"], ["b", "RUNNING"]]  # drivers left out
    assert main(["cluster", "status", "a"]) == 0
    assert "status        SUCCEEDED" in capsys.readouterr().out
    assert main(["cluster", "stop", "b"]) == 0
    assert capsys.readouterr().out == "stop requested for job b\n"
    assert main(["cluster", "stop", "a"]) == 0
    assert "(it had already ended)" in capsys.readouterr().out


def test_template_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from matforge.cluster.templates import list_templates, template_text

    assert main(["cluster", "template", "--list"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert listed == list_templates()
    name = listed[0]
    assert main(["cluster", "template", name]) == 0
    assert capsys.readouterr().out == template_text(name)
    out = tmp_path / "mine.txt"
    assert main(["cluster", "template", name, "--out", str(out)]) == 0
    assert out.read_text() == template_text(name)
    capsys.readouterr()
    assert main(["cluster", "template", name, "--out", str(out)]) == 2
    assert "exists" in error_line(capsys)
    assert main(["cluster", "template", name, "--out", str(out), "--force"]) == 0
    assert main(["cluster", "template", "no-such-template"]) == 2
    assert "no-such-template" in error_line(capsys)
