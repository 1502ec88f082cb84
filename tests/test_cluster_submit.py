"""``matforge cluster``, in-process and without a Ray cluster: arguments, error lines, exit statuses,
following a job and the commands (with a fake client). Address resolution is in test_cluster_address.py,
tokens and runtime envs in test_cluster_auth_env.py; the real submission path runs against local Ray
nodes in test_cluster_two_nodes.py and test_cluster_token_head.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from matforge.cli.main import build_parser, main
from matforge.cluster import submit as submit_module
from matforge.cluster.errors import ClusterError, one_line
from matforge.cluster.submit import JobServer, exit_code, explain, follow, status_line, translate_errors
from cluster_cli_helpers import error_line

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
