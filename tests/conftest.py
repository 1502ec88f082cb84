"""Shared fixtures. Keep this small: one fixture per widely used input, built in tmp dirs."""

from __future__ import annotations

from pathlib import Path

import pytest

SYNTH_RECORDS = 36  # three cycles of the generator's schedule: every kind, three 4-frame MD runs
SYNTH_SHARD_SIZE = 16  # -> shards of 16, 16 and 4 records, so reads cross shard boundaries


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A read-only EMT dataset: ``write_synth(n=36, seed=0, shard_size=16)``. Copy it before modifying."""
    from matforge.datasets.synth import write_synth

    out = tmp_path_factory.mktemp("synth") / "emt"
    write_synth(out, SYNTH_RECORDS, seed=0, shard_size=SYNTH_SHARD_SIZE)
    return out


@pytest.fixture(scope="session")
def perov5_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A read-only shard directory of the perov5 fixture rows (5-atom cells, property heat_all)."""
    from matforge.datasets.convert import convert

    out = tmp_path_factory.mktemp("perov5") / "perov5"
    convert([(Path(__file__).parent / "fixtures" / "perov5" / "val.csv").resolve()], out)
    return out


@pytest.fixture(params=["eager", "compiled"])
def kernels(request):
    """Each fused-kernel test once eagerly and once compiled (models/kernel_mode.py); eager afterwards."""
    import torch

    from matforge.models import kernel_mode

    torch._dynamo.reset()  # other tests' shapes and dtypes must not count against the recompile limit
    mode = kernel_mode.set_kernel_mode(request.param)
    yield mode
    kernel_mode.set_kernel_mode("eager")
