"""Heads: registry and spec round trips, the energy sum, the property normaliser and pooling, and
the equivariance of both noise-head variants."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch_geometric.data import Batch

from matforge.datasets.graphs import GraphBuilder
from matforge.datasets.record import Record
from matforge.models.heads import HEADS, EnergyHead, NoiseHead, PropertyHead, build_head, head_class
from matforge.models.model import AtomisticModel
from matforge.models.registry import create

CUTOFF = 4.5
F = 16


def _record(numbers, positions, cell) -> Record:
    return Record(id="t", numbers=np.asarray(numbers, dtype=np.int64), positions=np.asarray(positions, float),
                  cell=np.asarray(cell, float), pbc=np.ones(3, dtype=bool))


def rattled_rocksalt(seed: int = 0) -> Record:
    a = 5.64
    fcc = np.array([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])
    frac = np.vstack([fcc, fcc + [0.5, 0, 0]])
    rng = np.random.default_rng(seed)
    return _record([11] * 4 + [17] * 4, frac * a + 0.1 * rng.standard_normal((8, 3)), a * np.eye(3))


def bcc_mo() -> Record:
    a = 3.16
    return _record([42, 42], [[0.1, 0.0, -0.05], [a / 2, a / 2, a / 2]], a * np.eye(3))


def batch_of(*records: Record) -> Batch:
    builder = GraphBuilder(cutoff=CUTOFF, dtype="float64")
    return Batch.from_data_list([builder(r) for r in records])


def model_with(arch: str, heads: dict, seed: int = 0) -> AtomisticModel:
    torch.manual_seed(seed)
    return AtomisticModel(create(arch, hidden=F, num_interactions=2, cutoff=CUTOFF, num_radial=8), heads).double()


def test_registry_lists_every_head_lazily():
    assert HEADS == {
        "energy": "matforge.models.heads:EnergyHead",
        "noise": "matforge.models.heads:NoiseHead",
        "property": "matforge.models.heads:PropertyHead",
        "cgcnn": "matforge.models.cgcnn:CGCNNHead",
    }
    assert head_class("energy") is EnergyHead and head_class("noise") is NoiseHead
    with pytest.raises(ValueError, match="unknown head kind 'nope'; known: energy, noise, property, cgcnn"):
        head_class("nope")
    with pytest.raises(ValueError, match="'kind' key"):
        build_head({"in_dim": 4})
    with pytest.raises(ValueError, match="does not match EnergyHead"):
        build_head({"kind": "energy", "in_dim": 4, "colour": "red"})


@pytest.mark.parametrize("head", [
    EnergyHead(F, hidden=8, num_layers=2, scale=0.7, shift=-1.25),
    NoiseHead(F, hidden=8, use_vector=False, cutoff=CUTOFF, num_basis=6),
    NoiseHead(F, hidden=8, use_vector=True),
    PropertyHead(F, ["band_gap", "log_kvrh"], pooling="sum", hidden=8, mean=[1.5, -0.5], std=[2.0, 0.25]),
], ids=["energy", "noise-edge", "noise-vector", "property"])
def test_spec_rebuilds_the_same_head(head):
    import json

    spec = json.loads(json.dumps(head.spec()))   # the card stores it as JSON
    twin = build_head(spec)
    assert type(twin) is type(head) and twin.spec() == head.spec()
    twin.load_state_dict(head.state_dict(), strict=True)
    model = model_with("painn", {"h": head})
    twin_model = AtomisticModel(model.backbone, {"h": twin}).double()
    batch = batch_of(rattled_rocksalt(), bcc_mo())
    with torch.no_grad():
        out, out_twin = model(batch), twin_model(batch)
    for key in set(out) - {"node"}:
        torch.testing.assert_close(out_twin[key], out[key])


def test_energy_head_sums_scaled_atom_energies():
    plain = EnergyHead(F, hidden=8)
    scaled = EnergyHead(F, hidden=8, scale=2.5, shift=-0.75)
    scaled.load_state_dict(plain.state_dict())
    scaled.set_normalization(2.5, -0.75)   # buffers are in the state dict: set them again
    model = model_with("cgcnn_smooth", {"energy": plain})
    twin = AtomisticModel(model.backbone, {"energy": scaled}).double()
    batch = batch_of(rattled_rocksalt(), bcc_mo())
    with torch.no_grad():
        out, out_s = model(batch), twin(batch)
    assert out["atom_energy"].shape == (10,) and out["energy"].shape == (2,)
    torch.testing.assert_close(out["energy"], torch.stack([out["atom_energy"][:8].sum(), out["atom_energy"][8:].sum()]))
    torch.testing.assert_close(out_s["atom_energy"], 2.5 * out["atom_energy"] - 0.75)
    assert scaled.spec()["scale"] == 2.5 and scaled.spec()["shift"] == -0.75


def test_property_head_normaliser_and_pooling():
    mean_head = PropertyHead(F, ["a", "b"], pooling="mean", hidden=8)
    sum_head = PropertyHead(F, ["a", "b"], pooling="sum", hidden=8)
    norm_head = PropertyHead(F, ["a", "b"], pooling="mean", hidden=8, mean=[3.0, -1.0], std=[0.5, 4.0])
    sum_head.load_state_dict(mean_head.state_dict())
    norm_head.mlp.load_state_dict(mean_head.mlp.state_dict())
    model = model_with("painn", {"m": mean_head})
    batch = batch_of(rattled_rocksalt(), bcc_mo())
    outs = {}
    for name, head in [("mean", mean_head), ("sum", sum_head), ("norm", norm_head)]:
        with torch.no_grad():
            outs[name] = AtomisticModel(model.backbone, {"p": head}).double()(batch)["properties"]
    assert outs["mean"].shape == (2, 2)
    natoms = torch.tensor([[8.0], [2.0]], dtype=torch.float64)
    torch.testing.assert_close(outs["sum"], outs["mean"] * natoms)
    torch.testing.assert_close(outs["norm"], torch.tensor([3.0, -1.0]).double() + torch.tensor([0.5, 4.0]).double() * outs["mean"])
    norm_head.set_normalization([0.0, 0.0], [1.0, 1.0])
    with torch.no_grad():
        again = AtomisticModel(model.backbone, {"p": norm_head}).double()(batch)["properties"]
    torch.testing.assert_close(again, outs["mean"])
    assert norm_head.spec()["mean"] == [0.0, 0.0]


@pytest.mark.parametrize("kwargs, message", [
    (dict(names=[]), "at least one property"),
    (dict(names=["a", "a"]), "duplicate property names"),
    (dict(names=["a"], pooling="max"), "pooling must be"),
    (dict(names=["a", "b"], mean=[0.0]), "mean and std need 2 values"),
    (dict(names=["a"], std=[0.0]), "std must be positive"),
])
def test_property_head_refuses_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PropertyHead(F, **kwargs)


def random_rotation(seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


@pytest.mark.parametrize("arch, use_vector", [("cgcnn_smooth", False), ("painn", False), ("painn", True)])
def test_noise_head_rotates_with_the_structure(arch, use_vector):
    head = NoiseHead(F, hidden=8, use_vector=use_vector, cutoff=CUTOFF, num_basis=6)
    model = model_with(arch, {"noise": head})
    record = rattled_rocksalt()
    rot = random_rotation(3)
    rotated = _record(record.numbers, record.positions @ rot.T + [0.3, -1.0, 2.0], record.cell @ rot.T)
    with torch.no_grad():
        noise = model(batch_of(record))["noise"]
        noise_r = model(batch_of(rotated))["noise"]
    assert noise.shape == (8, 3) and noise.abs().max() > 1e-3
    torch.testing.assert_close(noise_r, noise @ torch.from_numpy(rot).T, rtol=1e-9, atol=1e-11)


def test_vector_noise_head_needs_vector_features():
    model = model_with("cgcnn_smooth", {"noise": NoiseHead(F, use_vector=True)})
    with pytest.raises(ValueError, match="needs a backbone with vector features"):
        model(batch_of(bcc_mo()))


def test_cgcnn_head_is_registered_under_its_module():
    cls = head_class("cgcnn")
    assert cls.__name__ == "CGCNNHead" and cls.kind == "cgcnn"
