"""Exact CGCNN: element features, Gaussian expansion, padding, and the backbone + head against an
independent dense re-implementation of the original code (tests/cgcnn_reference.py) with random
weights, in eval and training mode."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure
from torch_geometric.data import Batch

import cgcnn_reference as ref
from matforge.datasets.graphs import GraphBuilder, GraphConfig
from matforge.datasets.readers.structures import from_pymatgen
from matforge.datasets.record import Record
from matforge.models import create
from matforge.models.atom_features import cgcnn_atom_features
from matforge.models.cgcnn import CGCNN, CGCNNHead, GaussianDistance, pad_neighbours
from matforge.models.heads import build_head
from matforge.models.model import AtomisticModel

FIXTURE_ATOM_INIT = Path(__file__).parent / "fixtures" / "cgcnn" / "atom_init.json"
PACKAGE_ATOM_INIT = Path(__file__).parents[1] / "models" / "data" / "atom_init.json"


# --- structures and models -------------------------------------------------------------------------

def rocksalt(seed: int) -> Structure:
    """NaCl conventional cell (8 atoms), atoms displaced by up to 0.05 Å (no distance ties)."""
    s = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    _jiggle(s, seed)
    return s


def perovskite(seed: int) -> Structure:
    s = Structure(Lattice.from_parameters(3.9, 3.95, 4.0, 89, 91, 90), ["Sr", "Ti", "O", "O", "O"],
                  [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    _jiggle(s, seed)
    return s


def _jiggle(s: Structure, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for k in range(len(s)):
        s.translate_sites([k], rng.uniform(-0.05, 0.05, 3), frac_coords=False)


def record(s: Structure, name: str) -> Record:
    numbers, positions, cell, pbc = from_pymatgen(s)
    return Record(id=name, numbers=numbers, positions=positions, cell=cell, pbc=pbc)


def batch_of(structures: list[Structure], cutoff: float, dtype: str = "float32") -> Batch:
    builder = GraphBuilder(GraphConfig(cutoff=cutoff, max_neighbors=12, dtype=dtype))
    return Batch.from_data_list([builder(record(s, f"s{k}")) for k, s in enumerate(structures)])


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Random weights and BatchNorm running statistics (so eval-mode BN is not the identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point() or name.endswith((".mean", ".std")) or name == "element_refs":
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=g) * 0.3)


def make_model(n_conv: int = 2, cutoff: float = 8.0, task: str = "regression", n_h: int = 2, seed: int = 0,
               **head_kwargs) -> AtomisticModel:
    backbone = CGCNN(atom_fea_len=16, n_conv=n_conv, cutoff=cutoff)
    head = CGCNNHead(in_dim=16, h_fea_len=8, n_h=n_h, task=task, **head_kwargs)
    model = AtomisticModel(backbone, {"cgcnn": head})
    randomise(model, seed)
    return model


def reference_state(model: AtomisticModel) -> dict:
    """The model's weights under the original code's names (the head's prefix dropped)."""
    sd = {}
    for k, v in model.state_dict().items():
        if k.startswith("backbone."):
            sd[k.removeprefix("backbone.")] = v
        elif k.startswith("heads.cgcnn."):
            sd[k.removeprefix("heads.cgcnn.")] = v
    return sd


def package_atom_init() -> dict[int, np.ndarray]:
    return ref.read_atom_init(PACKAGE_ATOM_INIT)


# --- element features and Gaussians ---------------------------------------------------------------

def test_atom_feature_table_matches_the_released_json() -> None:
    table = cgcnn_atom_features()
    assert table.shape == (101, 92) and table.dtype == torch.float32
    assert not table[0].any()
    fixture = json.loads(FIXTURE_ATOM_INIT.read_text())  # an independent copy of some elements
    assert set(fixture) == {"6", "17", "19", "55"}
    for z, values in fixture.items():
        assert table[int(z)].tolist() == [float(v) for v in values]
    assert bool(((table[1:] == 0) | (table[1:] == 1)).all())
    assert int(table[1:].sum(dim=1).min()) >= 1  # every element has features
    table[6] = 7.0  # a copy: the cached table is unchanged
    assert cgcnn_atom_features()[6].tolist() == [float(v) for v in fixture["6"]]


def test_gaussian_expansion_centres_and_values() -> None:
    g = GaussianDistance(0.0, 8.0, 0.2)
    assert g.num_features == 41  # 0.0, 0.2, ..., 8.0
    assert g.centres[0] == 0.0 and math.isclose(float(g.centres[-1]), 8.0, abs_tol=1e-6)
    d = torch.tensor([1.0, 1.1, 9.0])
    u = g(d)
    assert u.shape == (3, 41)
    assert u[0, 5] == pytest.approx(1.0)                      # d on the centre μ_5 = 1.0
    assert u[0, 6] == pytest.approx(math.exp(-1.0), rel=1e-5)  # one step away: exp(-(0.2/0.2)^2)
    assert u[1, 5] == pytest.approx(math.exp(-0.25), rel=1e-5)  # half a step
    assert float(u[2].max()) == pytest.approx(math.exp(-25.0), rel=1e-4)  # padding distance 9 Å


def test_pad_neighbours_fills_every_centre_up_to_k_from_the_first_atom_of_its_graph() -> None:
    # graph 0: atoms 0,1 ; graph 1: atoms 2,3,4. Atom 2 has 3 edges, atom 3 has 1, others 0.
    edge_index = torch.tensor([[3, 4, 4, 2], [2, 2, 2, 3]])
    lengths = torch.tensor([1.0, 1.5, 2.0, 2.5])
    batch = torch.tensor([0, 0, 1, 1, 1])
    ei, ln = pad_neighbours(edge_index, lengths, batch, 2, max_neighbors=3, pad_length=9.0)
    assert torch.bincount(ei[1], minlength=5).tolist() == [3, 3, 3, 3, 3]
    assert ei[:, :4].tolist() == edge_index.tolist() and ln[:4].tolist() == lengths.tolist()
    pads = ei[:, 4:]
    first_atom = {0: 0, 1: 0, 3: 2, 4: 2}
    assert all(int(j) == first_atom[int(i)] for j, i in pads.T)
    assert ln[4:].tolist() == [9.0] * pads.shape[1]
    same, _ = pad_neighbours(ei, ln, batch, 2, max_neighbors=3, pad_length=9.0)
    assert same.shape == ei.shape  # nothing left to pad


# --- the model against the original code ----------------------------------------------------------

@pytest.mark.parametrize("cutoff", [8.0, 3.5])  # 3.5 Å: Na and Cl have 6 neighbours -> 6 padded slots each
def test_predictions_match_the_original_code_in_eval_mode(cutoff: float) -> None:
    structures = [rocksalt(1), perovskite(2), perovskite(3)]
    model = make_model(n_conv=3, cutoff=cutoff, mean=-1.5, std=0.7).eval()
    with torch.no_grad():
        ours = model(batch_of(structures, cutoff))["properties"].view(-1)
    atom_init = package_atom_init()
    crystals = [ref.featurise(s, atom_init, radius=cutoff) for s in structures]
    if cutoff == 3.5:
        assert int((crystals[0][1].sum(-1) < 1e-6).sum()) > 0  # padding really happens
    expected = ref.predict(reference_state(model), {"task": "regression", "n_conv": 3, "n_h": 2},
                           {"mean": -1.5, "std": 0.7}, crystals)
    assert ours.tolist() == pytest.approx(expected, abs=2e-5)


def test_training_mode_batchnorm_matches_the_original_and_couples_the_batch() -> None:
    structures = [rocksalt(4), perovskite(5)]
    cutoff = 3.5  # with padding, which enters the batch statistics in both implementations
    model = make_model(n_conv=2, cutoff=cutoff).train()
    raw = model(batch_of(structures, cutoff))["properties_normalized"].view(-1).detach()
    crystals = [ref.featurise(s, package_atom_init(), radius=cutoff) for s in structures]
    expected = ref.forward(reference_state(model), 2, 2, crystals, training=True).view(-1)
    assert raw.tolist() == pytest.approx(expected.tolist(), abs=1e-4)
    # BatchNorm in training mode: structure 0's output depends on its batch companion
    alone = model(batch_of(structures[:1], cutoff))["properties_normalized"].view(-1).detach()
    assert abs(float(alone[0]) - float(raw[0])) > 1e-4
    assert model.backbone.smooth is False
    model.eval()
    with torch.no_grad():
        together = model(batch_of(structures, cutoff))["properties"].view(-1)
        alone = model(batch_of(structures[:1], cutoff))["properties"].view(-1)
    assert float(alone[0]) == pytest.approx(float(together[0]), abs=1e-6)


def test_classification_head_gives_log_probabilities_like_the_original() -> None:
    structures = [perovskite(6), rocksalt(7)]
    model = make_model(task="classification", n_h=1).eval()
    with torch.no_grad():
        out = model(batch_of(structures, 8.0))
    assert out["logits"].shape == (2, 2) and out["properties"].shape == (2, 1)
    assert out["logits"].exp().sum(dim=1).tolist() == pytest.approx([1.0, 1.0], abs=1e-6)
    assert out["properties"].view(-1).tolist() == pytest.approx(out["logits"][:, 1].exp().tolist(), abs=1e-7)
    crystals = [ref.featurise(s, package_atom_init()) for s in structures]
    expected = ref.predict(reference_state(model), {"task": "classification", "n_conv": 2, "n_h": 1}, {}, crystals)
    assert out["properties"].view(-1).tolist() == pytest.approx(expected, abs=1e-5)


def test_prediction_is_invariant_to_rotation_translation_and_atom_order() -> None:
    s = perovskite(8)
    model = make_model().double().eval()
    rotation = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64))[0]
    moved = Structure(Lattice(s.lattice.matrix @ rotation.numpy()), s.species[::-1],
                      (s.cart_coords @ rotation.numpy() + np.array([0.3, -1.2, 2.0]))[::-1],
                      coords_are_cartesian=True)
    with torch.no_grad():
        a = model(batch_of([s], 8.0, "float64"))["properties"]
        b = model(batch_of([moved], 8.0, "float64"))["properties"]
    assert float(a) == pytest.approx(float(b), abs=1e-10)


# --- interface -------------------------------------------------------------------------------------

def test_freeze_groups_name_the_embedding_and_each_convolution() -> None:
    backbone = CGCNN(atom_fea_len=8, n_conv=3)
    groups = backbone.freeze_groups()
    assert [name for name, _ in groups] == ["embedding", "block.0", "block.1", "block.2"]
    grouped = {id(p) for _, modules in groups for m in modules for p in m.parameters()}
    assert grouped == {id(p) for p in backbone.parameters()}
    assert groups[1][1][0] is backbone.convs[0]


def test_registry_builds_cgcnn_with_the_reference_featurisation() -> None:
    backbone = create("cgcnn", n_conv=2)
    assert isinstance(backbone, CGCNN) and backbone.arch == "cgcnn"
    assert (backbone.cutoff, backbone.max_neighbors, backbone.embedding_dim) == (8.0, 12, 64)
    assert backbone.hparams == {"atom_fea_len": 64, "n_conv": 2, "cutoff": 8.0, "max_neighbors": 12,
                                "gaussian_step": 0.2, "gaussian_dmin": 0.0, "pad_neighbors": True}
    assert backbone.convs[0].fc_full.weight.shape == (128, 2 * 64 + 41)
    assert "atom_features" not in backbone.state_dict()  # package data, not weights


def test_head_spec_rebuilds_the_same_head() -> None:
    head = CGCNNHead(in_dim=16, h_fea_len=8, n_h=3, task="regression", mean=2.5, std=0.25, target="gap", units="eV")
    spec = head.spec()
    assert spec == {"kind": "cgcnn", "in_dim": 16, "h_fea_len": 8, "n_h": 3, "task": "regression", "mean": 2.5,
                    "std": 0.25, "target": "gap", "units": "eV"}
    json.dumps(spec)
    rebuilt = build_head(spec)
    assert isinstance(rebuilt, CGCNNHead)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in head.state_dict().items()}
    with pytest.raises(ValueError, match="task"):
        CGCNNHead(task="ranking")
