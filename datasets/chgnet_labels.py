"""Labels from CHGNet: total energy (eV), forces (eV/Å) and stress (eV/Å³, ASE sign) of ASE cells.

CHGNet (Deng et al., Nat. Mach. Intell. 2023; pip package ``chgnet`` 0.4.x, Modified BSD licence)
is a universal interatomic potential trained on the Materials Project trajectory set (MPtrj, PBE /
PBE+U). Its pretrained weights ship inside the wheel (``chgnet/pretrained/0.3.0/*.pth.tar``); 89
elements (Z = 1..83 and 89..94). It is an optional dependency: ``pip install "matforge[corpus]"``.
Nothing here imports ``chgnet`` at module import time.

Units and signs, as read from ``chgnet.model.model.CHGNet._compute`` and checked by finite
differences in ``tests/test_synth_chgnet.py``:

* CHGNet's energy head is intensive: its ``e`` is eV/atom, the sum of a per-atom network average and
  a per-element composition reference (``AtomRef``). matforge stores the total energy of the cell,
  ``E = natoms · e`` (eV).
* Forces are ``-∂E/∂r`` (eV/Å), shape (N, 3).
* CHGNet differentiates with respect to a strain applied as ``L → L (I + ε)`` (lattice vectors as
  rows, positions following the lattice), i.e. ``σ = (1/V) ∂E/∂ε``, which is ASE's sign (tensile
  positive); ``predict_structure`` multiplies it by 160.21766208 to report GPa. We skip that factor
  and keep eV/Å³, the unit and sign of :mod:`matforge.datasets.record`. (1 eV/Å³ = 160.21766208 GPa.)

Speed: :class:`ChgnetLabeller` does not call ``predict_structure``. That method differentiates with
``create_graph=True`` twice (forces, then stress), which builds a second-order graph it needs only
for training; here one ``torch.autograd.grad`` call of the total energy with respect to positions
and strains gives both, about twice as fast. On one CPU thread, small batches (1–4 structures) are
the fastest; larger batches were slower in our measurements (see ``benchmarks/corpus_chgnet.py``).

No pickle: ``CHGNet.load`` reads its checkpoint with ``torch.load(..., weights_only=False)``, which
can execute code from the file. :func:`load_chgnet` instead reads the same file with
``torch.load(..., weights_only=True)`` (tensors and plain containers only), builds ``CHGNet`` from
the stored ``model_args`` and loads the ``state_dict`` strictly, with the options ``CHGNet.load``
uses for model 0.3.0 (``mlp_out_bias=False``).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import numpy as np

MODEL_NAME = "CHGNet"
WEIGHTS_VERSION = "0.3.0"
WEIGHTS_FILE = "pretrained/0.3.0/chgnet_0.3.0_e29f68s314m37.pth.tar"
EV_PER_A3_IN_GPA = 160.21766208  # 1 eV/Å³ in GPa, the factor CHGNet uses
# Z = 1..83 (H..Bi) and 89..94 (Ac..Pu): the elements of MPtrj, CHGNet's training set
CHGNET_ELEMENTS: frozenset[int] = frozenset([*range(1, 84), *range(89, 95)])
EXTRA_HINT = 'pip install "matforge[corpus]"'


class MissingExtraError(ImportError):
    """``chgnet`` is not installed."""


def require_chgnet() -> None:
    """Raise :class:`MissingExtraError` with the install hint unless ``chgnet`` imports."""
    try:
        import chgnet  # noqa: F401
    except ImportError as exc:
        raise MissingExtraError(f"--calculator chgnet needs the corpus extra: {EXTRA_HINT}") from exc


@dataclass
class Labels:
    """One structure's labels: ``energy`` total eV, ``forces`` (N, 3) eV/Å, ``stress`` (3, 3) eV/Å³ (ASE sign)."""

    energy: float
    forces: np.ndarray
    stress: np.ndarray


def _package_dir() -> Path:
    import chgnet

    return Path(chgnet.__file__).resolve().parent


def weights_path() -> Path:
    """The pretrained 0.3.0 checkpoint inside the installed ``chgnet`` package."""
    return _package_dir() / WEIGHTS_FILE


@lru_cache(maxsize=1)
def model_info() -> dict[str, Any]:
    """Provenance for the manifest: model, package version and licence, weights version and sha256."""
    from importlib.metadata import metadata, version

    require_chgnet()
    meta = metadata("chgnet")
    path = weights_path()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return {
        "model": MODEL_NAME,
        "package": "chgnet",
        "package_version": version("chgnet"),
        "weights_version": WEIGHTS_VERSION,
        "weights_file": WEIGHTS_FILE,
        "weights_sha256": digest,
        "licence": meta.get("License") or meta.get("License-Expression") or "see the chgnet package",
        "training_data": "MPtrj (Materials Project relaxation trajectories; PBE/PBE+U)",
        "reference": "B. Deng et al., Nat. Mach. Intell. 5, 1031 (2023)",
    }


def load_chgnet():
    """The pretrained CHGNet 0.3.0 model on CPU in eval mode, read without pickle (module docstring)."""
    import torch

    require_chgnet()
    from chgnet.model import CHGNet

    state = torch.load(weights_path(), map_location="cpu", weights_only=True)
    with contextlib.redirect_stdout(io.StringIO()):  # CHGNet prints a banner when built
        model = CHGNet(**state["model"]["model_args"], mlp_out_bias=False, version=WEIGHTS_VERSION)
    model.load_state_dict(state["model"]["state_dict"], strict=True)
    return model.eval()


class ChgnetLabeller:
    """Callable: a list of :class:`ase.Atoms` → a list of :class:`Labels` or, for a structure CHGNet
    cannot label (e.g. an atom with no neighbour within 6 Å), a one-line reason string.

    ``batch_size`` structures go through the network together (see the module docstring on speed).
    """

    name = "chgnet-0.3.0"

    def __init__(self, batch_size: int = 2) -> None:
        self.model = load_chgnet()
        self.batch_size = int(batch_size)

    def __call__(self, atoms_list: Sequence[Any]) -> list[Labels | str]:
        from pymatgen.io.ase import AseAtomsAdaptor

        graphs: list[Any] = []
        slots: list[int] = []
        out: list[Labels | str] = ["not labelled"] * len(atoms_list)
        for i, atoms in enumerate(atoms_list):
            try:
                graphs.append(self.model.graph_converter(AseAtomsAdaptor.get_structure(atoms)))
                slots.append(i)
            except Exception as exc:  # CHGNet raises ValueError / SystemExit-free errors for isolated atoms
                out[i] = f"CHGNet graph: {type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
        for start in range(0, len(graphs), self.batch_size):
            batch = graphs[start:start + self.batch_size]
            for j, labels in enumerate(self._label_graphs(batch)):
                out[slots[start + j]] = labels
        return out

    def _label_graphs(self, graphs: list[Any]) -> list[Labels]:
        """Energy, forces and stress of CHGNet graphs in one forward and one backward pass."""
        import torch
        from chgnet.model.model import BatchedGraph

        model = self.model
        composition = model.composition_model(graphs)  # (B,) eV/atom, position-independent
        with warnings.catch_warnings():  # CHGNet's own torch.tensor(list of tensors) warning
            warnings.simplefilter("ignore", UserWarning)
            g = BatchedGraph.from_graphs(graphs, bond_basis_expansion=model.bond_basis_expansion,
                                         angle_basis_expansion=model.angle_basis_expansion, compute_stress=True)
        per_atom = model._compute(g)["e"]  # (B,) eV/atom (CHGNet divides by natoms: intensive head)
        natoms = torch.bincount(g.atom_owners).to(per_atom.dtype)
        total = (per_atom + composition) * natoms  # (B,) eV
        grads = torch.autograd.grad(total.sum(), [*g.atom_positions, *g.strains])
        b = len(graphs)
        result = []
        for k in range(b):
            volume = float(g.volumes[k])
            result.append(Labels(
                energy=float(total[k].detach()),
                forces=-grads[k].detach().numpy().astype(np.float64),
                stress=_symmetric(grads[b + k].detach().numpy().astype(np.float64) / volume),
            ))
        return result


def _symmetric(s: np.ndarray) -> np.ndarray:
    """(s + sᵀ)/2: ∂E/∂ε of a rotation-invariant energy is symmetric; this removes float32 noise."""
    return 0.5 * (s + s.T)


class LabellerCalculator:
    """An ASE calculator around a labeller (one structure per call), for MD and relaxations.

    Implements energy (eV), forces (eV/Å) and stress (eV/Å³, ASE sign; ASE asks Voigt order
    xx, yy, zz, yz, xz, xy); all three come from one labeller call and are cached by ASE.
    """

    def __new__(cls, labeller: Any):
        from ase.calculators.calculator import Calculator, all_changes

        class _Calc(Calculator):
            implemented_properties = ["energy", "free_energy", "forces", "stress"]

            def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
                super().calculate(atoms, properties, system_changes)
                labels = labeller([self.atoms])[0]
                if isinstance(labels, str):
                    raise LabellerFailure(labels)
                s = labels.stress
                self.results = {
                    "energy": labels.energy, "free_energy": labels.energy, "forces": labels.forces,
                    "stress": np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]]),
                    "stress_3x3": s,
                }

        return _Calc()


class LabellerFailure(RuntimeError):
    """The labeller could not label a structure during MD or a relaxation; the message says why."""
