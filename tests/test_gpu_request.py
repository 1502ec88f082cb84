"""A GPU run this machine cannot hold is refused at once, naming the keys, before data or Ray start."""

from __future__ import annotations

import pytest
import torch

from matforge.cli.main import main
from matforge.pretrain.config import ConfigError, load_config
from matforge.pretrain.launcher import check_local_gpus, run_pretrain


def _cfg(tmp_path, *overrides: str):
    return load_config("quickstart", [f"data.train={tmp_path / 'data'}", f"data.val={tmp_path / 'data'}",
                                      f"run.storage_path={tmp_path / 'runs'}", *overrides])


def _gpus(monkeypatch, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def test_embedded_gpu_run_without_gpus_fails_before_anything_starts(tmp_path, monkeypatch):
    import ray

    _gpus(monkeypatch, 0)
    cfg = _cfg(tmp_path, "scaling.use_gpu=true", "scaling.num_workers=1")
    with pytest.raises(ConfigError, match=r"scaling.use_gpu=true with scaling.num_workers=1 needs 1 GPU\(s\) "
                                          r"on this machine, and torch sees 0"):
        run_pretrain(cfg)
    assert not ray.is_initialized()
    assert not (tmp_path / "data").exists() and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("workers, gpus, refused", [(1, 1, False), (2, 1, True), (2, 2, False), (0, 1, False),
                                                     (0, 0, True), (4, 3, True)])
def test_workers_against_visible_gpus(tmp_path, monkeypatch, workers, gpus, refused):
    _gpus(monkeypatch, gpus)
    cfg = _cfg(tmp_path, "scaling.use_gpu=true", f"scaling.num_workers={workers}")
    if refused:
        expected = f"needs {max(1, workers)} GPU\\(s\\) on this machine, and torch sees {gpus}"
        with pytest.raises(ConfigError, match=expected):
            check_local_gpus(cfg, None)
    else:
        check_local_gpus(cfg, None)


def test_cluster_and_cpu_runs_are_not_checked(tmp_path, monkeypatch):
    _gpus(monkeypatch, 0)
    check_local_gpus(_cfg(tmp_path, "scaling.use_gpu=true", "scaling.num_workers=8"), "auto")
    check_local_gpus(_cfg(tmp_path, "scaling.use_gpu=false", "scaling.num_workers=8"), None)


def test_cli_reports_the_refusal(tmp_path, monkeypatch):
    _gpus(monkeypatch, 0)
    with pytest.raises(SystemExit) as exc:
        main(["pretrain", "--config", "quickstart", f"run.storage_path={tmp_path}", "scaling.use_gpu=true"])
    message = str(exc.value)
    assert message.startswith("matforge: error: scaling.use_gpu=true with scaling.num_workers=2 needs 2 GPU(s)")
    assert "--address" in message
