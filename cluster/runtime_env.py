"""The runtime environment a submitted job runs in: a YAML/JSON file merged with command-line flags.

``--runtime-env FILE`` holds a Ray runtime environment as YAML or JSON (JSON is YAML too), e.g.::

    working_dir: .                  # uploaded to the cluster; the entry point runs inside it
    pip: ["matforge[pretrain] @ git+https://github.com/ORG/matforge@v0.1.0"]
    env_vars: {NCCL_DEBUG: WARN}

The flags are merged into it, the flags winning:

* ``--working-dir DIR`` replaces ``working_dir`` (a local directory, uploaded; or a remote ``.zip`` URI);
* ``--pip PKG`` (repeatable) adds requirements to ``pip``, whether that is a list, a ``{packages: [...]}``
  mapping or the path of a requirements file (its lines are read in); not beside ``conda`` or ``uv``;
* ``--env KEY=VALUE`` (repeatable) sets ``env_vars[KEY]``.

As with ``ray job submit``, relative paths (``working_dir``, a ``pip`` requirements file) are relative
to the current directory. Problems are one-line :class:`~matforge.cluster.errors.ClusterError`\\ s naming
the file and, for YAML syntax errors, the line.
"""

from __future__ import annotations

import copy
import re
import sys
from pathlib import Path
from typing import Any, Iterable

from matforge.cluster.errors import ClusterError

ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def load_runtime_env_file(path: str | Path) -> dict[str, Any]:
    """The mapping in the YAML or JSON file ``path`` (an empty file is ``{}``)."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ClusterError(f"runtime env file {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ClusterError(f"runtime env file {path}: cannot read it ({getattr(err, 'strerror', None) or err})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ClusterError(f"runtime env file {path}: {_yaml_problem(err)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ClusterError(f"runtime env file {path}: expected a mapping (working_dir:, pip:, env_vars:, ...), "
                           f"found a {type(data).__name__}")
    return data


def _yaml_problem(err: Exception) -> str:
    """``line L, column C: <problem>`` from a PyYAML error."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err)
    context = getattr(err, "context", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"does not parse as YAML or JSON: {where}{problem}" + (f" ({context})" if context else "")


def parse_env_assignments(items: Iterable[str]) -> dict[str, str]:
    """``{"KEY": "VALUE"}`` from ``KEY=VALUE`` strings (the value may contain ``=`` or be empty)."""
    env: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not ENV_KEY.match(key):
            raise ClusterError(f"--env {item!r}: expected KEY=VALUE with KEY a variable name (letters, digits, _)")
        env[key] = value
    return env


def _requirements_lines(path: str) -> list[str]:
    """The requirement lines of a requirements file (comments and blank lines dropped)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise ClusterError(f"pip requirements file {path} (the runtime env's pip): {err.strerror or err}") from None
    return [line.split(" #", 1)[0].strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def merge_pip(current: Any, extra: list[str]) -> Any:
    """``current`` (a runtime env's ``pip``: list, mapping with ``packages``, requirements path, or None) plus ``extra``."""
    if not extra:
        return current
    if current is None:
        return list(extra)
    if isinstance(current, str):
        return _requirements_lines(current) + [p for p in extra]
    if isinstance(current, list):
        return current + [p for p in extra if p not in current]
    if isinstance(current, dict):
        merged = dict(current)
        packages = merged.get("packages", [])
        if isinstance(packages, str):
            packages = _requirements_lines(packages)
        merged["packages"] = list(packages) + [p for p in extra if p not in packages]
        return merged
    raise ClusterError(f"the runtime env's pip is a {type(current).__name__}; expected a list, a mapping or a file path")


def build_runtime_env(file: str | Path | None = None, working_dir: str | None = None,
                      pip: Iterable[str] = (), env: Iterable[str] = ()) -> dict[str, Any]:
    """The runtime env of a submission: ``file`` (if any) with ``--working-dir``, ``--pip`` and ``--env`` merged in."""
    runtime_env = copy.deepcopy(load_runtime_env_file(file)) if file else {}
    origin = f"runtime env file {file}" if file else "the runtime env"
    if working_dir is not None:
        if "://" not in working_dir and not Path(working_dir).is_dir():
            raise ClusterError(f"--working-dir {working_dir}: no such directory")
        runtime_env["working_dir"] = working_dir
    extra_pip = [p.strip() for p in pip if p.strip()]
    if extra_pip:
        for other in ("conda", "uv"):
            if runtime_env.get(other):
                raise ClusterError(f"{origin} installs packages with {other}; --pip cannot be added beside it "
                                   f"(Ray takes one of pip, uv, conda): list the packages under {other} instead")
        runtime_env["pip"] = merge_pip(runtime_env.get("pip"), extra_pip)
    variables = parse_env_assignments(env)
    if variables:
        current = runtime_env.get("env_vars") or {}
        if not isinstance(current, dict):
            raise ClusterError(f"{origin}: env_vars must be a mapping of names to strings")
        runtime_env["env_vars"] = {**current, **variables}
    return runtime_env


def validate_runtime_env(runtime_env: dict[str, Any], origin: str = "the runtime env") -> dict[str, Any]:
    """Check ``runtime_env`` with Ray's own ``RuntimeEnv`` (types, pip/uv/conda, local paths); return it.

    Fields Ray does not know are passed on (Ray's plugins may take them) with a warning on stderr:
    a misspelt ``env_var`` would otherwise do nothing, silently.
    """
    from ray.runtime_env import RuntimeEnv

    unknown = sorted(set(runtime_env) - set(RuntimeEnv.known_fields))
    if unknown:
        print(f"matforge: warning: {origin}: field(s) {', '.join(unknown)} are not runtime env fields Ray knows; "
              "they are passed on as they are", file=sys.stderr)
    try:
        RuntimeEnv(**copy.deepcopy(runtime_env))
    except (ValueError, TypeError) as err:
        raise ClusterError(f"{origin}: {err}") from None
    return runtime_env
