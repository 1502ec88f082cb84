"""Attention-CGCNN: parameter count against CGCNN, the attention formula against an explicit loop,
invariances, and the backbone interface."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pymatgen.core import Lattice, Structure
from torch_geometric.data import Batch

from matforge.datasets.graphs import GraphBuilder, GraphConfig
from matforge.datasets.readers.structures import from_pymatgen
from matforge.datasets.record import Record
from matforge.models import create
from matforge.models.cgcnn import CGCNN, CGCNNHead
from matforge.models.cgcnn_attention import AttentionCGCNN, AttentionConv
from matforge.models.model import AtomisticModel


def conv_parameters(backbone: torch.nn.Module) -> int:
    return sum(p.numel() for p in backbone.convs.parameters())


@pytest.mark.parametrize("atom_fea_len, n_conv", [(64, 3), (64, 4), (32, 2)])
def test_attention_convolutions_have_about_half_the_weights_of_cgcnn(atom_fea_len: int, n_conv: int) -> None:
    cgcnn = CGCNN(atom_fea_len=atom_fea_len, n_conv=n_conv)
    attention = AttentionCGCNN(atom_fea_len=atom_fea_len, n_conv=n_conv)
    f, k = atom_fea_len, cgcnn.expansion.num_features
    assert k == 41
    # CGCNN layer: fc_full (2F+K -> 2F, with bias), BN1 over 2F (weight+bias), BN2 over F (weight+bias)
    cgcnn_layer = (2 * f + k) * 2 * f + 2 * f + 2 * (2 * f) + 2 * f
    # attention layer: W_s, b_s (2F+K -> F), BN1 over F, BN2 over F; the attention has no parameters
    attention_layer = (2 * f + k) * f + f + 2 * f + 2 * f
    assert conv_parameters(cgcnn) == n_conv * cgcnn_layer
    assert conv_parameters(attention) == n_conv * attention_layer
    ratio = conv_parameters(attention) / conv_parameters(cgcnn)
    # = (2F+K+5) / (2(2F+K)+8): 1/2 up to the BatchNorm and bias terms
    assert ratio == pytest.approx((2 * f + k + 5) / (2 * (2 * f + k) + 8))
    assert abs(ratio - 0.5) < 0.01
    embedding = 92 * f + f
    assert sum(p.numel() for p in cgcnn.parameters()) == embedding + n_conv * cgcnn_layer
    assert sum(p.numel() for p in attention.parameters()) == embedding + n_conv * attention_layer


def explicit_conv(conv: AttentionConv, h: torch.Tensor, edge_index: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The module docstring's formula, centre by centre, with eval-mode BatchNorm written out."""
    def bn(x: torch.Tensor, m: torch.nn.BatchNorm1d) -> torch.Tensor:
        return (x - m.running_mean) / torch.sqrt(m.running_var + m.eps) * m.weight + m.bias

    out = torch.empty_like(h)
    for i in range(h.shape[0]):
        edges = [e for e in range(edge_index.shape[1]) if int(edge_index[1, e]) == i]
        m_i = torch.zeros(h.shape[1], dtype=h.dtype)
        if edges:
            logits = torch.stack([torch.dot(h[i], h[edge_index[0, e]]) * torch.dot(u[e], u[e]) for e in edges])
            c = torch.exp(logits - logits.max()) / torch.exp(logits - logits.max()).sum()
            for weight, e in zip(c, edges):
                z = torch.cat([h[i], h[edge_index[0, e]], u[e]])
                s = F.softplus(bn(z @ conv.fc_core.weight.T + conv.fc_core.bias, conv.bn1))
                m_i = m_i + weight * s
        out[i] = F.softplus(h[i] + bn(m_i, conv.bn2))
    return out


def test_attention_convolution_follows_the_formula() -> None:
    g = torch.Generator().manual_seed(0)
    conv = AttentionConv(atom_fea_len=6, nbr_fea_len=5).double().eval()
    with torch.no_grad():
        for bn in (conv.bn1, conv.bn2):
            bn.running_mean.copy_(torch.randn(6, generator=g))
            bn.running_var.copy_(torch.rand(6, generator=g) + 0.5)
            bn.weight.copy_(torch.randn(6, generator=g))
    h = torch.randn(5, 6, generator=g, dtype=torch.float64)
    # centre 0: three edges (two parallel ones from atom 1), centre 2: one, centres 1, 3, 4: some, none for 4
    edge_index = torch.tensor([[1, 1, 2, 0, 3, 0, 2], [0, 0, 0, 2, 1, 3, 3]])
    u = torch.rand(7, 5, generator=g, dtype=torch.float64)
    with torch.no_grad():
        ours = conv(h, edge_index, u)
        weights = conv.attention(h, edge_index, u)
    assert torch.allclose(ours, explicit_conv(conv, h, edge_index, u), atol=1e-12)
    sums = torch.zeros(5, dtype=torch.float64).index_add(0, edge_index[1], weights)
    assert sums.tolist() == pytest.approx([1.0, 1.0, 1.0, 1.0, 0.0])
    assert float(weights[3]) == 1.0  # a single neighbour gets all the weight
    logits = torch.stack([h[0] @ h[1] * (u[0] @ u[0]), h[0] @ h[1] * (u[1] @ u[1]), h[0] @ h[2] * (u[2] @ u[2])])
    assert weights[:3].tolist() == pytest.approx(torch.softmax(logits, 0).tolist(), abs=1e-12)
    # an atom without neighbours keeps a finite embedding: softplus(v + BN2(0))
    assert torch.isfinite(ours[4]).all()


def graphs(structures: list[Structure], cutoff: float, dtype: str = "float64") -> Batch:
    builder = GraphBuilder(GraphConfig(cutoff=cutoff, max_neighbors=12, dtype=dtype))
    out = []
    for k, s in enumerate(structures):
        numbers, positions, cell, pbc = from_pymatgen(s)
        out.append(builder(Record(id=str(k), numbers=numbers, positions=positions, cell=cell, pbc=pbc)))
    return Batch.from_data_list(out)


def model(seed: int = 0) -> AtomisticModel:
    torch.manual_seed(seed)
    m = AtomisticModel(AttentionCGCNN(atom_fea_len=16, n_conv=2), {"cgcnn": CGCNNHead(16, 8, 1)}).double()
    with torch.no_grad():
        for name, t in m.state_dict().items():
            if "running_var" in name:
                t.uniform_(0.5, 1.5)
            elif "running_mean" in name:
                t.normal_(0, 0.3)
    return m.eval()


def test_prediction_is_invariant_to_rotation_translation_and_atom_order() -> None:
    s = Structure(Lattice.from_parameters(3.9, 4.0, 4.1, 88, 91, 93), ["Sr", "Ti", "O", "O", "O"],
                  [[0, 0, 0], [0.5, 0.52, 0.49], [0.5, 0.5, 0.03], [0.48, 0.0, 0.5], [0.01, 0.5, 0.5]])
    rotation = np.linalg.qr(np.random.default_rng(3).normal(size=(3, 3)))[0]
    moved = Structure(Lattice(s.lattice.matrix @ rotation), s.species[::-1],
                      (s.cart_coords @ rotation + np.array([1.0, -0.5, 0.25]))[::-1], coords_are_cartesian=True)
    m = model()
    with torch.no_grad():
        a = m(graphs([s], 8.0))["properties"]
        b = m(graphs([moved], 8.0))["properties"]
    assert float(a) == pytest.approx(float(b), abs=1e-10)


def test_gradients_reach_every_parameter_and_isolated_atoms_stay_finite() -> None:
    lonely = Structure(Lattice.cubic(12.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])  # nothing within 3 Å
    crystal = Structure(Lattice.cubic(2.9), ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    m = model().train()
    out = m(graphs([lonely, crystal], 3.0))["properties"]
    assert torch.isfinite(out).all()
    out.sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert float(p.grad.abs().sum()) > 0, name


def test_interface_registry_and_freeze_groups() -> None:
    backbone = create("cgcnn_attention", atom_fea_len=8, n_conv=2)
    assert isinstance(backbone, AttentionCGCNN) and backbone.arch == "cgcnn_attention"
    assert (backbone.cutoff, backbone.max_neighbors, backbone.embedding_dim, backbone.smooth) == (8.0, 12, 8, False)
    groups = backbone.freeze_groups()
    assert [name for name, _ in groups] == ["embedding", "block.0", "block.1"]
    assert {id(p) for _, ms in groups for m in ms for p in m.parameters()} == {id(p) for p in backbone.parameters()}
    assert math.isclose(backbone.expansion.width, 0.2)
