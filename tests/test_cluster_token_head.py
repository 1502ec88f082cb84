"""``matforge cluster`` against single-node Ray heads on this machine (loopback), run as the CLI.

* a head that requires token authentication (``RAY_AUTH_MODE=token``): the right token submits and
  follows a job; a wrong or missing token is a one-line error;
* a head without the dashboard: a one-line error for its dashboard URL and for its GCS address.

The heads are tests/loopback_cluster.py's. About a minute on 2 cores.
"""

from __future__ import annotations

import secrets
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
from loopback_cluster import LocalCluster, base_env, cli, one_error_line, short_socket_dir

# a stuck test is stopped (and its clusters torn down by the fixtures) well before CI gives up
pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def short_tmp() -> Iterator[Path]:
    with short_socket_dir() as path:
        yield path


@pytest.fixture(scope="module")
def token_head(short_tmp: Path) -> Iterator[tuple[LocalCluster, str]]:
    """A one-node cluster started with ``RAY_AUTH_MODE=token`` and a fresh token."""
    token = secrets.token_hex(16)
    cluster = LocalCluster(short_tmp / "token", base_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token),
                           ("--num-cpus=1",))
    try:
        cluster.wait_dashboard(headers={"Authorization": f"Bearer {token}"})
        yield cluster, token
    finally:
        cluster.stop()


def test_token_auth(token_head: tuple[LocalCluster, str], tmp_path: Path) -> None:
    cluster, token = token_head
    home = tmp_path / "home"  # no ~/.ray/auth_token here
    home.mkdir()
    right = base_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, HOME=str(home))
    code = tmp_path / "code"  # uploaded as the working directory (an authenticated upload)
    code.mkdir()
    (code / "hello.txt").write_text("uploaded\n")
    env_file = tmp_path / "env.yaml"
    env_file.write_text("env_vars: {GREETING: from-file, OTHER: kept}\n")
    done = cli("cluster", "submit", "--address", cluster.url, "--runtime-env", str(env_file), "--working-dir", str(code),
               "--env", "GREETING=from-flag", "--entrypoint-num-cpus", "0", "--", sys.executable, "-c",
               "import os; print('token accepted', open('hello.txt').read().strip(), os.environ['GREETING'], "
               "os.environ['OTHER'])", env=right)
    assert done.returncode == 0, (done.stdout, done.stderr)
    # the log stream (a websocket) carried the token too; the runtime env arrived merged
    assert "token accepted uploaded from-flag kept" in done.stdout
    job_id = done.stdout.splitlines()[0]

    token_file = tmp_path / "token.txt"
    token_file.write_text(f"{token}\n")
    by_file = base_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_file), HOME=str(home))
    assert cli("cluster", "status", job_id, "--address", cluster.url, env=by_file).returncode == 0
    (home / ".ray").mkdir()
    (home / ".ray" / "auth_token").write_text(token)
    listed = cli("cluster", "list", "--address", cluster.url, env=base_env(RAY_AUTH_MODE="token", HOME=str(home)))
    assert listed.returncode == 0 and job_id in listed.stdout

    wrong = cli("cluster", "list", "--address", cluster.url,
                env=base_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="not-the-token", HOME=str(home)))
    assert wrong.returncode == 2
    assert "refused the token from RAY_AUTH_TOKEN" in one_error_line(wrong.stderr)
    missing = cli("cluster", "submit", "--address", cluster.url, "--", "true", env=base_env(HOME=str(home)))
    assert missing.returncode == 2
    assert "requires token authentication" in one_error_line(missing.stderr)
    none_found = cli("cluster", "list", "--address", cluster.url,
                     env=base_env(RAY_AUTH_MODE="token", HOME=str(tmp_path)))
    assert none_found.returncode == 2 and "no token was found" in one_error_line(none_found.stderr)

    # by the GCS address the token goes to the GCS first (gRPC), with the same outcomes
    assert cli("cluster", "list", "--address", cluster.gcs_address, env=right).returncode == 0
    gcs_wrong = cli("cluster", "list", "--address", cluster.gcs_address,
                    env=base_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="not-the-token", HOME=str(home)))
    assert gcs_wrong.returncode == 2 and "refused the token" in one_error_line(gcs_wrong.stderr)
    gcs_missing = cli("cluster", "list", "--address", cluster.gcs_address, env=base_env(HOME=str(home)))
    assert gcs_missing.returncode == 2 and "requires token authentication" in one_error_line(gcs_missing.stderr)


def test_head_without_dashboard_is_a_one_line_error(short_tmp: Path) -> None:
    cluster = LocalCluster(short_tmp / "nodash", base_env(RAY_AUTH_MODE="disabled"),
                           ("--num-cpus=1", "--include-dashboard=false"))
    try:
        deadline = time.monotonic() + 60
        while not list(cluster.head.temp_dir.glob("session_*/logs/raylet.out")):  # the node is up
            assert cluster.head.alive() and time.monotonic() < deadline, cluster.head.tail()
            time.sleep(0.5)
        time.sleep(2)
        by_url = cli("cluster", "list", "--address", cluster.url)
        assert by_url.returncode == 2 and "connection refused" in one_error_line(by_url.stderr)
        by_gcs = cli("cluster", "list", "--address", cluster.gcs_address)
        assert by_gcs.returncode == 2
        assert "without the dashboard" in one_error_line(by_gcs.stderr), by_gcs.stderr
    finally:
        cluster.stop()
