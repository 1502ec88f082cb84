"""``matforge cluster``: token discovery and headers, runtime env files and flags, in-process.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from matforge.cli.main import main
from matforge.cluster.auth import auth_failure_message, auth_headers, find_token
from matforge.cluster.errors import ClusterError
from matforge.cluster.runtime_env import build_runtime_env, load_runtime_env_file, parse_env_assignments
from cluster_cli_helpers import closed_port, error_line

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
