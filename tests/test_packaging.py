"""The distribution: one import namespace from top-level folders, a working wheel, a light CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOP_FOLDERS = ["cli", "datasets", "models", "training", "pretrain", "finetune", "cluster"]
SUBPACKAGES = sorted(
    str(init.parent.relative_to(ROOT)).replace(os.sep, ".")
    for top in TOP_FOLDERS for init in (ROOT / top).rglob("__init__.py")
)


def test_help_does_not_import_torch_or_ray() -> None:
    code = (
        "import sys\n"
        "from matforge.cli.main import build_parser\n"
        "build_parser().format_help()\n"
        "heavy = [m for m in ('torch', 'ray', 'numpy', 'pymatgen', 'lmdb') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd="/")


def _choices(parser) -> dict:
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices
    return {}


def test_every_command_is_registered() -> None:
    from matforge.cli.main import build_parser

    top = _choices(build_parser())
    assert sorted(top) == sorted(["data", "pretrain", "export", "import-cgcnn", "predict", "finetune", "backbones", "cluster", "bench"])
    assert sorted(_choices(top["data"])) == ["convert", "inspect", "leakage", "merge", "split", "synth"]
    assert sorted(_choices(top["bench"])) == ["data", "finetune", "pretrain", "science", "train"]
    assert sorted(_choices(top["cluster"])) == ["list", "logs", "status", "stop", "submit", "template"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(out), str(ROOT)], check=True, cwd=out)
    wheels = list(out.glob("matforge-*.whl"))
    assert len(wheels) == 1
    return wheels[0]


def test_wheel_holds_every_subpackage_under_matforge(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert {"cli", "datasets", "datasets.readers", "models"} <= set(SUBPACKAGES)
    for sub in SUBPACKAGES:
        assert f"matforge/{sub.replace('.', '/')}/__init__.py" in names, sub
    # no top-level 'datasets' or 'models' package leaks out of the namespace
    tops = {n.split("/")[0] for n in names if not n.startswith("matforge-")}
    assert tops == {"matforge"}, tops
    # every .py of the source folders is in the wheel
    for sub in SUBPACKAGES:
        folder = ROOT / sub.replace(".", "/")
        for py in folder.glob("*.py"):
            assert f"matforge/{sub.replace('.', '/')}/{py.name}" in names, py


def test_installed_wheel_imports_like_the_checkout(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True)
    # -S: no site processing, so the editable install's finder is off; deps come from site-packages.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(target), sysconfig.get_paths()["purelib"]]))
    code = (
        "import matforge.datasets as d, matforge.models as m, matforge.cli.main as c\n"
        f"assert d.__file__.startswith({str(target)!r}), d.__file__\n"
        "from matforge.datasets.record import Record\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-S", "-c", code], env=env, check=True, capture_output=True,
                         text=True, cwd=tmp_path).stdout
    assert out.strip() == "ok"


def test_python_dash_m_matforge_is_the_command() -> None:
    result = subprocess.run([sys.executable, "-m", "matforge", "--help"], capture_output=True, text=True, cwd="/")
    assert result.returncode == 0, result.stderr
    assert "usage: matforge" in result.stdout and "finetune" in result.stdout


def test_wheel_runs_as_python_dash_m(wheel: Path) -> None:
    assert "matforge/__main__.py" in zipfile.ZipFile(wheel).namelist()
