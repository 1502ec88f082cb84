"""From a backbone specification to the model fine-tuning trains (``matforge.finetune.model_setup``):
reference-energy refit, new elements, the new heads and the parent models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from matforge.finetune.errors import FinetuneError
from matforge.finetune.model_setup import (attach_head, check_elements, keep_new_embeddings_trainable, load_parent,
                                           refit_element_references)
from matforge.finetune.strategies import Strategy
from matforge.models.cgcnn import CGCNNHead
from matforge.models.heads import EnergyHead, PropertyHead
from matforge.models.model import AtomisticModel
from matforge.models.registry import create


def _cgcnn(heads=None, elements=None) -> AtomisticModel:
    torch.manual_seed(0)
    backbone = create("cgcnn", atom_fea_len=8, n_conv=3)
    return AtomisticModel(backbone, heads if heads is not None else {"y": PropertyHead(8, ["y"])}, elements=elements)


def _painn(heads=None, elements=None) -> AtomisticModel:
    torch.manual_seed(0)
    backbone = create("painn", hidden=8, num_interactions=2, cutoff=4.0)
    return AtomisticModel(backbone, heads if heads is not None else {"y": PropertyHead(8, ["y"])}, elements=elements)


# -- refit_element_references ------------------------------------------------------------------------------
def _refit_problem(seed: int = 0):
    rng = np.random.default_rng(seed)
    elements = np.array([3, 8, 26])
    shifts = np.array([-1.9183, 0.4471, -7.3052])
    counts = rng.integers(1, 6, size=(20, 3))
    numbers = [rng.permutation(np.repeat(elements, row)) for row in counts]
    model_energies = rng.normal(0.0, 5.0, 20)
    energies = model_energies + counts @ shifts
    return elements, shifts, numbers, energies, model_energies


def test_refit_element_references_recovers_known_shifts():
    elements, shifts, numbers, energies, model_energies = _refit_problem()
    model = _painn().double()
    model.element_refs[1] = 0.75                      # an element absent from the data
    result = refit_element_references(model, numbers, energies, model_energies)
    assert result["rank"] == 3 and result["structures"] == 20
    assert list(result["element_refs"]) == ["3", "8", "26"]
    np.testing.assert_allclose(list(result["element_refs"].values()), shifts, rtol=0, atol=1e-8)
    np.testing.assert_allclose(model.element_refs[elements].numpy(), shifts, rtol=0, atol=1e-8)
    untouched = np.delete(np.arange(101), np.r_[elements, 1])
    assert not model.element_refs[untouched].any()
    assert model.element_refs[1].item() == 0.75


def test_refit_element_references_in_a_float32_model():
    elements, shifts, numbers, energies, model_energies = _refit_problem(seed=1)
    model = _cgcnn()
    refit_element_references(model, numbers, energies, model_energies)
    assert model.element_refs.dtype == torch.float32
    np.testing.assert_allclose(model.element_refs[elements].double().numpy(), shifts, rtol=1e-6, atol=1e-6)


def test_refit_element_references_needs_structures():
    with pytest.raises(FinetuneError, match="no training structure has an energy label"):
        refit_element_references(_cgcnn(), [], np.zeros(0), np.zeros(0))


# -- check_elements / keep_new_embeddings_trainable ------------------------------------------------------------
def test_check_elements_refuses_unseen_elements_naming_them():
    model = _painn(elements=[1, 8])
    with pytest.raises(FinetuneError, match=r"train\.csv: element\(s\) Fe, Cu never seen.*knows H, O"):
        check_elements(model, [8, 29, 1, 26, 26], allow_new=False, where="train.csv")
    assert model.elements == [1, 8]


def test_check_elements_known_or_unrestricted_is_a_no_op():
    model = _painn(elements=[1, 8])
    before = model.backbone.embedding.weight.detach().clone()
    assert check_elements(model, [1, 8, 8], allow_new=False, where="x") == []
    unrestricted = _painn()
    assert check_elements(unrestricted, [1, 50, 90], allow_new=False, where="x") == []
    assert unrestricted.elements == [] and torch.equal(model.backbone.embedding.weight, before)


def test_check_elements_allow_new_redraws_only_the_new_rows():
    model = _painn(elements=[1, 6, 7, 8])
    table = model.backbone.embedding
    with torch.no_grad():
        table.weight[[1, 6, 7, 8]] = torch.randn(4, 8) * 0.01     # known rows: std ~ 0.01
    before = table.weight.detach().clone()
    torch.manual_seed(3)
    new = check_elements(model, [1, 8, 29, 26], allow_new=True, where="train")
    assert new == [26, 29]
    assert model.elements == [1, 6, 7, 8, 26, 29]
    after = table.weight.detach()
    others = [z for z in range(table.num_embeddings) if z not in (26, 29)]
    assert torch.equal(after[others], before[others])               # every other row bit-identical
    assert not torch.equal(after[26], before[26]) and not torch.equal(after[29], before[29])
    # drawn with the known rows' standard deviation (0.01), not the default N(0, 1) init
    assert float(after[[26, 29]].abs().max()) < 0.1


def test_check_elements_allow_new_on_cgcnn_only_extends_the_element_list():
    model = _cgcnn(elements=[3, 8])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert check_elements(model, [3, 9], allow_new=True, where="train") == [9]
    assert model.elements == [3, 8, 9]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_new_embedding_rows_stay_trainable_under_a_frozen_embedding():
    model = _painn(elements=[1, 8])
    check_elements(model, [1, 8, 26], allow_new=True, where="train")
    Strategy.parse("freeze:0").apply(model)
    table = model.backbone.embedding
    assert not table.weight.requires_grad
    enabled = keep_new_embeddings_trainable(model)
    assert len(enabled) == 1 and enabled[0] is table.weight and table.weight.requires_grad
    z = torch.tensor([1, 8, 26, 26, 3])
    (table(z) * torch.arange(1.0, 9.0)).sum().backward()
    grad = table.weight.grad
    assert torch.equal(grad[26], 2 * torch.arange(1.0, 9.0))       # the new row gets its gradient
    assert not grad[[z_ for z_ in range(table.num_embeddings) if z_ != 26]].any()   # known rows: none
    # only the table was re-enabled; the blocks keep the strategy's flags (freeze:0: they train)
    flags = {n: p.requires_grad for n, p in model.backbone.named_parameters()}
    assert flags.pop("embedding.weight") and all(flags.values())


def test_keep_new_embeddings_trainable_without_new_rows_or_freezing_does_nothing():
    model = _painn(elements=[1, 8])
    Strategy.parse("probe").apply(model)
    assert keep_new_embeddings_trainable(model) == []
    assert not model.backbone.embedding.weight.requires_grad
    model = _painn(elements=[1, 8])
    check_elements(model, [26], allow_new=True, where="train")
    Strategy.parse("full").apply(model)
    assert keep_new_embeddings_trainable(model) == []                # already trains whole


# -- attach_head ---------------------------------------------------------------------------------------------
def test_attach_head_cgcnn_mean_is_the_reference_cgcnn_head():
    model = _cgcnn()
    dropped = attach_head(model, "regression", "band_gap", pooling="mean", units="eV")
    assert dropped == ["y"] and list(model.heads) == ["properties"]
    head = model.heads["properties"]
    assert isinstance(head, CGCNNHead)
    spec = head.spec()
    assert (spec["in_dim"], spec["h_fea_len"], spec["n_h"], spec["task"], spec["target"], spec["units"]) == (
        8, 128, 1, "regression", "band_gap", "eV")


def test_attach_head_copies_the_parent_cgcnn_head_layout():
    parent_head = CGCNNHead(8, h_fea_len=16, n_h=2)
    model = _cgcnn(heads={"cgcnn": parent_head})
    dropped = attach_head(model, "classification", "metal")
    head = model.heads["properties"]
    assert dropped == ["cgcnn"] and head is not parent_head
    assert (head.spec()["h_fea_len"], head.spec()["n_h"], head.spec()["task"]) == (16, 2, "classification")


def test_attach_head_sum_pooling_or_painn_is_a_property_head():
    model = _cgcnn()
    attach_head(model, "regression", "energy_total", pooling="sum", head_hidden=12)
    head = model.heads["properties"]
    assert isinstance(head, PropertyHead)
    assert head.spec()["pooling"] == "sum" and head.spec()["names"] == ["energy_total"] and head.spec()["hidden"] == 12
    model = _painn()
    attach_head(model, "classification", "metal", pooling="mean")
    head = model.heads["properties"]
    assert type(head) is PropertyHead and head.task == "classification" and head.spec()["pooling"] == "mean"


def test_attach_head_rejects_unknown_pooling():
    with pytest.raises(FinetuneError, match="pooling"):
        attach_head(_cgcnn(), "regression", "y", pooling="max")


def test_attach_head_potential_keeps_the_energy_head_object():
    energy = EnergyHead(8, hidden=4)
    model = _painn(heads={"energy": energy, "y": PropertyHead(8, ["y"]), "aux": PropertyHead(8, ["a"])})
    dropped = attach_head(model, "potential", "efs")
    assert dropped == ["aux", "y"]
    assert list(model.heads) == ["energy"] and model.heads["energy"] is energy


def test_attach_head_potential_without_an_energy_head_builds_one():
    model = _painn(heads={"energy": PropertyHead(8, ["energy"]), "y": PropertyHead(8, ["y"])})
    dropped = attach_head(model, "potential", "energy", head_hidden=16)
    assert dropped == ["energy", "y"]
    head = model.heads["energy"]
    assert isinstance(head, EnergyHead) and head.spec()["in_dim"] == 8 and head.spec()["hidden"] == 16


# -- load_parent ---------------------------------------------------------------------------------------------
def test_load_parent_none_copies_a_released_architecture_with_fresh_weights():
    released, released_parent = load_parent("cgcnn-formation-energy")
    model, parent = load_parent("none", arch="cgcnn-formation-energy")
    assert released_parent.kind == "released" and parent.kind == "none" and parent.spec == "none"
    assert parent.architecture == released.backbone.arch == model.backbone.arch == "cgcnn"
    assert model.backbone.hparams == released.backbone.hparams
    assert model.backbone.hparams["atom_fea_len"] == 64 and model.backbone.hparams["n_conv"] == 4
    assert list(model.heads) == list(released.heads) == ["cgcnn"]
    ours_spec, theirs_spec = model.heads["cgcnn"].spec(), released.heads["cgcnn"].spec()
    for key in ("kind", "in_dim", "h_fea_len", "n_h", "task", "target", "units"):
        assert ours_spec[key] == theirs_spec[key], key
    for key in ("mean", "std"):
        assert ours_spec[key] == pytest.approx(theirs_spec[key], rel=1e-7), key
    assert model.elements == released.elements
    assert "cgcnn-formation-energy" in parent.provenance()["source"]
    ours, theirs = model.state_dict(), released.state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
    assert all(v.dtype == torch.float32 for v in model.parameters())
    weights = [k for k in ours if k.endswith("weight")]
    assert weights and all(not torch.equal(ours[k], theirs[k]) for k in weights)
    # deterministic in the seed
    same, _ = load_parent("none", arch="cgcnn-formation-energy", seed=0)
    other, _ = load_parent("none", arch="cgcnn-formation-energy", seed=1)
    assert all(torch.equal(v, same.state_dict()[k]) for k, v in ours.items())
    assert not torch.equal(other.state_dict()["backbone.embedding.weight"], ours["backbone.embedding.weight"])


def test_load_parent_none_copies_the_head_normaliser_exactly():
    released, _ = load_parent("cgcnn-formation-energy")
    model, _ = load_parent("none", arch="cgcnn-formation-energy")
    assert model.heads["cgcnn"].spec() == released.heads["cgcnn"].spec()
    for name in ("mean", "std"):
        ours, theirs = getattr(model.heads["cgcnn"], name), getattr(released.heads["cgcnn"], name)
        assert ours.dtype == theirs.dtype and torch.equal(ours, theirs)


def test_load_parent_none_with_an_architecture_name():
    model, parent = load_parent("none", arch="painn", hyperparameters={"hidden": 8, "num_interactions": 1})
    assert model.backbone.arch == "painn" and model.backbone.hparams["hidden"] == 8
    assert parent.kind == "none" and parent.architecture == "painn" and len(model.heads) == 0
    with pytest.raises(FinetuneError, match="--arch painn"):
        load_parent("none", arch="painn", hyperparameters={"no_such_option": 1})


def test_load_parent_none_without_arch_raises():
    with pytest.raises(FinetuneError, match="needs --arch"):
        load_parent("none")


def test_load_parent_arch_only_with_none():
    with pytest.raises(FinetuneError, match="only to --backbone none"):
        load_parent("cgcnn-formation-energy", arch="cgcnn")
    with pytest.raises(FinetuneError, match="hyper-parameters cannot be changed"):
        load_parent("none", arch="cgcnn-formation-energy", hyperparameters={"n_conv": 2})


def test_load_parent_unknown_name_lists_the_released_backbones():
    from matforge.finetune import registry

    names = registry.released_names()
    assert {"cgcnn-formation-energy", "cgcnn-band-gap", "cgcnn-bulk-moduli", "cgcnn-shear-moduli"} <= set(names)
    with pytest.raises(FinetuneError) as info:
        load_parent("no-such-backbone")
    message = str(info.value)
    assert "'no-such-backbone'" in message and f"released backbones: {', '.join(names)}" in message
