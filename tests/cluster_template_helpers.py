"""Shared by the tests of the cluster definitions: read a template, Ray's schema and pin, and the
``matforge pretrain`` commands the templates run (through the real parser and config loader)."""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from pathlib import Path
from typing import Any

import yaml

from matforge.cluster.templates import template_text

ROOT = Path(__file__).resolve().parents[1]
RAY_UP = ["aws", "gcp"]
SHARED = "/mnt/matforge"


def yaml_template(name: str) -> dict[str, Any]:
    return yaml.safe_load(template_text(name))


def ray_schema() -> dict[str, Any]:
    import ray

    return json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())


def ray_pin():
    """The Ray requirement of the [cluster] extra, from pyproject.toml."""
    from packaging.requirements import Requirement

    if sys.version_info >= (3, 11):
        import tomllib
    else:  # Python 3.10: tomli comes with the dev extra
        import tomli as tomllib
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["cluster"]
    return next(Requirement(r) for r in extras if Requirement(r).name == "ray").specifier


def pretrain_command(argv: list[str]):
    """Parse ``matforge pretrain ARGS`` with the real sub-command parser and load its config."""
    from matforge.cli import pretrain as pretrain_cli
    from matforge.pretrain.config import load_config

    assert argv[:2] == ["matforge", "pretrain"], argv
    parser = argparse.ArgumentParser(prog="matforge")
    pretrain_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv[1:])
    return args, load_config(args.config, args.overrides)


def commented_command(text: str, marker: str = "matforge pretrain") -> list[str]:
    """The shell command in the comments that contains ``marker`` (continuation lines joined), from
    ``marker`` on."""
    lines = [line.lstrip()[1:].strip() for line in text.splitlines() if line.lstrip().startswith("#")]
    logical, current = [], ""
    for line in lines:
        if line.endswith("\\"):
            current += line[:-1] + " "
        else:
            logical.append(current + line)
            current = ""
    found = [line[line.index(marker):] for line in logical if marker in line]
    assert len(found) == 1, f"expected one commented '{marker}' command, found {found}"
    return shlex.split(found[0])


def cuda_tag(text: str) -> str:
    """The one CUDA tag (``cu128``) named in ``text``."""
    tags = set(re.findall(r"-(cu\d{3})\b", text))
    assert len(tags) == 1, tags
    return tags.pop()
