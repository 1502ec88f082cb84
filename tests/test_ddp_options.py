"""DDP options of the pre-training worker: the per-step buffer broadcast is kept only where training
changes buffers (BatchNorm running statistics)."""
from __future__ import annotations

from matforge.models import create
from matforge.pretrain.worker import _ddp_options


def test_models_without_batchnorm_skip_the_buffer_broadcast() -> None:
    for name in ("painn", "cgcnn_smooth"):
        model = create(name)
        assert _ddp_options(model) == {"forward_sync_buffers": False, "gradient_as_bucket_view": True}, name


def test_batchnorm_models_keep_the_buffer_broadcast() -> None:
    for name in ("cgcnn", "cgcnn_attention"):
        model = create(name)
        assert _ddp_options(model)["forward_sync_buffers"] is True, name
