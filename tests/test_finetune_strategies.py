"""Fine-tuning strategies (``matforge.finetune.strategies``): parsing, which weights freeze, train/eval
modes of frozen modules, layer-wise learning-rate groups and seeded re-initialisation, on tiny CGCNN
and PaiNN models."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from matforge.finetune.errors import FinetuneError
from matforge.finetune.strategies import Strategy, count_parameters, reset_parameters
from matforge.models.heads import PropertyHead
from matforge.models.model import AtomisticModel
from matforge.models.registry import create

BACKBONES = {"cgcnn": dict(atom_fea_len=8, n_conv=3), "painn": dict(hidden=8, num_interactions=2, cutoff=4.0)}


def _model(arch: str = "cgcnn", seed: int = 0) -> AtomisticModel:
    torch.manual_seed(seed)
    backbone = create(arch, **BACKBONES[arch])
    return AtomisticModel(backbone, {"properties": PropertyHead(backbone.embedding_dim, ["y"])})


def _param_ids(modules) -> set[int]:
    return {id(p) for m in modules for p in m.parameters()}


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# -- parse ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, kind, k, decay", [
    ("full", "full", 0, 1.0), ("probe", "probe", 0, 1.0), ("freeze:0", "freeze", 0, 1.0),
    (" freeze:3 ", "freeze", 3, 1.0), ("lrdecay:0.5", "lrdecay", 0, 0.5), ("lrdecay:1", "lrdecay", 0, 1.0)])
def test_parse_valid(text, kind, k, decay):
    strategy = Strategy.parse(text, reinit_rest=True)
    assert (strategy.kind, strategy.k, strategy.decay, strategy.reinit_rest) == (kind, k, decay, True)


@pytest.mark.parametrize("text", ["freeze:-1", "lrdecay:0", "lrdecay:1.5", "bogus", "freeze", "freeze:", "freeze:1.5",
                                  "lrdecay:nan", "lrdecay:-0.5", "full:1", "probe:2", "lrdecay", ""])
def test_parse_rejects_bad_strings(text):
    with pytest.raises(FinetuneError, match="is not one of"):
        Strategy.parse(text)
    assert issubclass(FinetuneError, ValueError)


def test_str_round_trips_through_parse():
    for text in ("full", "probe", "freeze:2", "lrdecay:0.25"):
        assert str(Strategy.parse(text)) == text
        assert Strategy.parse(str(Strategy.parse(text))) == Strategy.parse(text)
    assert str(Strategy.parse("freeze:1", reinit_rest=True)) == "freeze:1 (rest re-initialised)"


# -- apply: freezing -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["cgcnn", "painn"])
def test_freeze_k_freezes_exactly_the_embedding_and_first_k_blocks(arch):
    model = _model(arch)
    groups = model.backbone.freeze_groups()
    n_blocks = len(groups) - 1
    for k in range(n_blocks + 1):
        Strategy.parse(f"freeze:{k}").apply(model)
        frozen = _param_ids(m for _, modules in groups[: k + 1] for m in modules)
        assert frozen                                                    # something is frozen
        for name, p in model.named_parameters():
            assert p.requires_grad == (id(p) not in frozen), (k, name)
        trainable, total = count_parameters(model)
        assert total == sum(p.numel() for p in model.parameters())
        assert trainable == total - sum(p.numel() for p in model.parameters() if id(p) in frozen)


def test_apply_unfreezes_what_an_earlier_strategy_froze():
    model = _model()
    Strategy.parse("probe").apply(model)
    Strategy.parse("full").apply(model)
    assert all(p.requires_grad for p in model.parameters())
    trainable, total = count_parameters(model)
    assert trainable == total > 0


@pytest.mark.parametrize("arch, blocks", [("cgcnn", 3), ("painn", 2)])
def test_freeze_more_blocks_than_the_backbone_has_raises_naming_the_count(arch, blocks):
    model = _model(arch)
    with pytest.raises(FinetuneError, match=rf"only {blocks} interaction block\(s\) \(freeze:0\.\.{blocks}"):
        Strategy.parse(f"freeze:{blocks + 1}").apply(model)


@pytest.mark.parametrize("arch", ["cgcnn", "painn"])
def test_probe_freezes_the_whole_backbone_only(arch):
    model = _model(arch)
    Strategy.parse("probe").apply(model)
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.heads.parameters())
    trainable, total = count_parameters(model)
    assert trainable == sum(p.numel() for p in model.heads.parameters())
    assert total == trainable + sum(p.numel() for p in model.backbone.parameters())


# -- train / eval modes -------------------------------------------------------------------------------------
def test_set_train_mode_keeps_frozen_modules_in_eval():
    model = _model("cgcnn")
    strategy = Strategy.parse("freeze:1")
    strategy.apply(model)
    strategy.set_train_mode(model, True)
    convs = model.backbone.convs
    assert model.training and model.heads.training
    assert not model.backbone.embedding.training
    for k, conv in enumerate(convs):
        expect = k >= 1
        assert conv.training == expect and conv.bn1.training == expect and conv.bn2.training == expect, k
    # a frozen BatchNorm keeps its running statistics through a training-mode forward
    before = convs[0].bn1.running_mean.clone()
    convs[0].bn1(torch.randn(5, convs[0].bn1.num_features) + 3.0)
    assert torch.equal(convs[0].bn1.running_mean, before)
    strategy.set_train_mode(model, False)
    assert not any(m.training for m in model.modules())


def test_set_train_mode_probe_and_full():
    model = _model("cgcnn")
    probe = Strategy.parse("probe")
    probe.apply(model)
    probe.set_train_mode(model)
    assert not any(m.training for m in model.backbone.modules())
    assert all(m.training for m in model.heads.modules())
    full = Strategy.parse("full")
    full.apply(model)
    full.set_train_mode(model)
    assert all(m.training for m in model.modules())


# -- parameter groups ------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["cgcnn", "painn"])
def test_lrdecay_groups_scales_and_partition(arch):
    model = _model(arch)
    strategy = Strategy.parse("lrdecay:0.5")
    strategy.apply(model)
    groups = strategy.parameter_groups(model)
    n = len(model.backbone.freeze_groups()) - 1
    names = ["embedding"] + [f"block.{k}" for k in range(n)] + ["head"]
    assert [g["name"] for g in groups] == names
    expected = [0.5 ** (n + 1)] + [0.5 ** (n - k) for k in range(n)] + [1.0]
    assert [g["lr_scale"] for g in groups] == expected
    assert groups[-2]["lr_scale"] == 0.5 and groups[0]["lr_scale"] == 0.5 ** (n + 1)
    # each group holds exactly its modules' parameters; every trainable parameter in exactly one group
    for g, (name, modules) in zip(groups, model.backbone.freeze_groups()):
        assert {id(p) for p in g["params"]} == _param_ids(modules), name
    assert {id(p) for p in groups[-1]["params"]} == _param_ids([model.heads])
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters() if p.requires_grad}


@pytest.mark.parametrize("text", ["full", "freeze:1", "probe"])
def test_other_strategies_give_one_group_of_the_trainable_weights(text):
    model = _model("cgcnn")
    strategy = Strategy.parse(text)
    strategy.apply(model)
    groups = strategy.parameter_groups(model)
    assert len(groups) == 1 and groups[0]["lr_scale"] == 1.0
    assert [id(p) for p in groups[0]["params"]] == [id(p) for p in model.parameters() if p.requires_grad]


# -- reinit_rest ---------------------------------------------------------------------------------------------
def test_reinit_rest_keeps_frozen_weights_and_redraws_the_rest_deterministically():
    original = _model("cgcnn", seed=0)
    base = _state(original)
    runs = []
    for seed in (5, 5, 6):
        model = _model("cgcnn", seed=0)
        rng_before = torch.get_rng_state()
        Strategy.parse("freeze:1", reinit_rest=True).apply(model, seed=seed)
        assert torch.equal(torch.get_rng_state(), rng_before)           # global RNG untouched
        runs.append(_state(model))
    first, again, other = runs
    for key, value in base.items():
        frozen = key.startswith(("backbone.embedding.", "backbone.convs.0."))   # freeze:1 = embedding + block 0
        if frozen or key.startswith("heads.") or key == "element_refs":
            assert torch.equal(first[key], value), key                    # bit-identical
        assert torch.equal(first[key], again[key]), key                   # same seed, same weights
    for block in (1, 2):
        for key in (f"backbone.convs.{block}.fc_full.weight", f"backbone.convs.{block}.fc_full.bias"):
            assert not torch.equal(first[key], base[key]), key            # redrawn
            assert not torch.equal(first[key], other[key]), key           # another seed, other weights
    # the unfrozen blocks are back at their default init (BatchNorm: unit weight, zero running mean)
    assert torch.equal(first["backbone.convs.1.bn1.weight"], torch.ones(16))
    assert torch.equal(first["backbone.convs.2.bn2.running_mean"], torch.zeros(8))


def test_reinit_rest_with_freeze_1_on_painn_changes_block_1_only():
    model = _model("painn", seed=0)
    base = _state(model)
    Strategy.parse("freeze:1", reinit_rest=True).apply(model, seed=0)
    after = _state(model)
    changed = {k for k in base if not torch.equal(base[k], after[k])}
    assert changed and all(k.startswith("backbone.blocks.1.") for k in changed)
    weights = [k for k in base if k.startswith("backbone.blocks.1.") and k.endswith("weight")]
    assert all(k in changed for k in weights)


def test_reset_parameters_redraws_every_submodule():
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(3, 4), nn.Sequential(nn.Linear(4, 2)), nn.BatchNorm1d(2))
    with torch.no_grad():
        for p in module.parameters():
            p.fill_(7.0)
        module[2].running_mean.fill_(3.0)
    reset_parameters(module)
    assert not torch.equal(module[0].weight, torch.full_like(module[0].weight, 7.0))
    assert not torch.equal(module[1][0].weight, torch.full_like(module[1][0].weight, 7.0))
    assert torch.equal(module[2].weight.detach(), torch.ones(2)) and torch.equal(module[2].running_mean, torch.zeros(2))


def test_reinit_rest_leaves_the_accelerator_generators_alone(monkeypatch):
    reseeded: list[int] = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: reseeded.append(int(seed)))
    model = _model("cgcnn")
    reseeded.clear()
    Strategy.parse("freeze:1", reinit_rest=True).apply(model, seed=11)
    assert reseeded == []                            # the CUDA generators were not reseeded
