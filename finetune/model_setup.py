"""From a backbone specification to the model a fine-tuning run trains.

Backbone specifications (:func:`load_parent`):

* a released name (``cgcnn-formation-energy``, ...; :mod:`matforge.finetune.registry`);
* a backbone directory (``matforge export`` / ``import-cgcnn`` / ``finetune`` output);
* an original CGCNN checkpoint ``*.pth.tar`` (imported on the fly, safely);
* ``none`` with ``arch``: random weights, the scratch baseline. ``arch`` is an architecture name
  (``cgcnn``, ``cgcnn_smooth``, ``cgcnn_attention``, ``painn``) with optional hyper-parameters, or
  any of the specifications above, whose architecture, hyper-parameters and head layout are copied
  with fresh weights, so that "scratch" and "pre-trained" differ only in the initial weights.

The new head (:func:`attach_head`) replaces the pre-training heads:

* a property (regression or binary classification), named ``properties``: on a CGCNN-family
  backbone with mean pooling it is the reference CGCNN output network (:class:`CGCNNHead`, as in
  seed 0: pooled → hidden layers → output; its width and depth copied from the parent's head when
  it had one); otherwise a :class:`PropertyHead` (atom-wise MLP, then mean (intensive) or sum
  (extensive) pooling);
* a potential (``efs`` / ``energy_forces`` / ``energy``): the parent's ``energy`` head is kept (it is
  part of the potential) and every other head dropped; a parent without one gets a new energy head.

Elements (:func:`check_elements`): a parent trained on a list of elements refuses data with others,
naming them, unless ``allow_new_elements``; then their rows of a learned embedding table are drawn
afresh (normal, with the standard deviation of the known rows) and stay trainable even under a
freezing strategy (a gradient mask keeps the known rows fixed).

Reference energies of a potential (:func:`refit_element_references`): the new data's DFT settings
may shift each element's energy zero. Before the first step the references are refitted by least
squares to what the current model leaves unexplained::

    ref = argmin_x ‖A x − (E − E_model⁰)‖²,   A_mZ = atoms of element Z in structure m

where ``E_model⁰`` is the model's energy without references, so the step-0 energy error is the
smallest any choice of references gives, instead of jumping by the shift.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from matforge.finetune.errors import FinetuneError

if TYPE_CHECKING:  # pragma: no cover
    from matforge.models.model import AtomisticModel

CGCNN_FAMILY = ("cgcnn", "cgcnn_attention")
POTENTIAL_TARGETS = ("efs", "energy_forces", "energy")


@dataclass
class Parent:
    """Where the starting weights came from (recorded in the fine-tuned card)."""

    spec: str
    kind: str                      # released | directory | cgcnn_checkpoint | none
    path: str | None = None
    sha256: str | None = None      # of the parent's weights (safetensors) or checkpoint file
    architecture: str = ""
    card: dict[str, Any] = field(default_factory=dict)

    def provenance(self) -> dict[str, Any]:
        out: dict[str, Any] = {"spec": self.spec, "kind": self.kind, "path": self.path, "sha256": self.sha256,
                               "architecture": self.architecture}
        prov = self.card.get("provenance") or {}
        for key in ("name", "source", "objective", "trained_on", "licence", "dataset_manifest_sha256"):
            if key in prov:
                out[key] = prov[key]
        return out


def _released_path(spec: str) -> Path | None:
    try:
        from matforge.finetune import registry
    except ImportError:  # pragma: no cover - registry shipped with the package
        return None
    return registry.released_path(spec) if registry.is_released(spec) else None


def _load_pretrained(spec: str) -> tuple["AtomisticModel", Parent]:
    from matforge.models.backbone_file import load
    from matforge.models.cgcnn_import import convert_checkpoint
    from matforge.datasets.shards import file_sha256

    released = _released_path(spec)
    path = released if released is not None else Path(spec).expanduser()
    if path.is_dir():
        model = load(path)
        card = model.card  # type: ignore[attr-defined]
        return model, Parent(spec, "released" if released is not None else "directory", str(path),
                             (card.get("weights") or {}).get("sha256"), card["architecture"], card)
    if path.is_file() and (path.name.endswith(".pth.tar") or path.suffix in (".pth", ".pt", ".tar")):
        model, provenance = convert_checkpoint(path)
        return model, Parent(spec, "cgcnn_checkpoint", str(path), file_sha256(path), model.backbone.arch,
                             {"provenance": provenance})
    known = ""
    try:
        from matforge.finetune import registry

        known = f"; released backbones: {', '.join(registry.released_names())}"
    except ImportError:  # pragma: no cover
        pass
    raise FinetuneError(f"backbone {spec!r}: not a released name, a backbone directory or a CGCNN .pth.tar "
                        f"(or 'none' with --arch){known}")


def load_parent(spec: str | os.PathLike, arch: str | None = None,
                hyperparameters: dict[str, Any] | None = None, seed: int = 0) -> tuple["AtomisticModel", Parent]:
    """The starting model and its :class:`Parent` (module docstring). Weights are float32."""
    from matforge.models.heads import build_head
    from matforge.models.model import AtomisticModel
    from matforge.models.registry import ARCHITECTURES, create

    spec = str(spec)
    if spec != "none":
        if arch is not None or hyperparameters:
            raise FinetuneError("--arch and hyper-parameters apply only to --backbone none (the scratch baseline)")
        return _load_pretrained(spec)
    if not arch:
        raise FinetuneError(f"--backbone none needs --arch: an architecture ({', '.join(ARCHITECTURES)}) or a "
                            "backbone whose architecture to copy with random weights")
    torch.manual_seed(seed)
    if arch in ARCHITECTURES:
        try:
            backbone = create(arch, **(hyperparameters or {}))
        except (TypeError, ValueError) as exc:
            raise FinetuneError(f"--arch {arch}: {exc}") from None
        return AtomisticModel(backbone, {}), Parent("none", "none", architecture=arch)
    if hyperparameters:
        raise FinetuneError("hyper-parameters cannot be changed when --arch copies a backbone")
    reference, ref_parent = _load_pretrained(arch)
    torch.manual_seed(seed)
    backbone = create(ref_parent.architecture, **reference.backbone.hparams)
    heads = {name: build_head(head.spec()) for name, head in reference.heads.items()}
    parent = Parent("none", "none", architecture=ref_parent.architecture,
                    card={"provenance": {"source": f"random weights, architecture of {arch}"}})
    return AtomisticModel(backbone, heads, elements=reference.elements), parent


def attach_head(model: "AtomisticModel", task: str, target: str, pooling: str = "mean", units: str = "",
                head_hidden: int = 64) -> list[str]:
    """Replace the heads for ``task`` (regression | classification | potential); return the dropped
    heads' names (see the module docstring)."""
    from matforge.models.cgcnn import CGCNNHead
    from matforge.models.heads import EnergyHead, PropertyHead

    old = dict(model.heads.items())
    dim = model.backbone.embedding_dim
    if task == "potential":
        energy = old.get("energy")
        if energy is None or energy.spec().get("kind") != "energy":
            energy = EnergyHead(dim, hidden=head_hidden)
        new = {"energy": energy}
    else:
        if pooling not in ("mean", "sum"):
            raise FinetuneError(f"pooling must be mean (intensive) or sum (extensive), got {pooling!r}")
        previous = next((h.spec() for h in old.values() if h.spec().get("kind") == "cgcnn"), None)
        if model.backbone.arch in CGCNN_FAMILY and pooling == "mean":
            head = CGCNNHead(dim, h_fea_len=int((previous or {}).get("h_fea_len", 128)),
                             n_h=int((previous or {}).get("n_h", 1)), task=task, target=target, units=units)
        else:
            head = PropertyHead(dim, [target], pooling=pooling, hidden=head_hidden, task=task)
        new = {"properties": head}
    dropped = sorted(name for name in old if name not in new or new[name] is not old[name])
    model.heads = torch.nn.ModuleDict(new)
    return dropped


def _symbols(zs: list[int]) -> str:
    from ase.data import chemical_symbols

    return ", ".join(chemical_symbols[z] for z in zs)


def _embedding_tables(model: "AtomisticModel") -> list[torch.nn.Embedding]:
    groups = dict(model.backbone.freeze_groups())
    return [m for module in groups.get("embedding", []) for m in module.modules() if isinstance(m, torch.nn.Embedding)]


def check_elements(model: "AtomisticModel", data_elements: list[int], allow_new: bool, where: str) -> list[int]:
    """Refuse (or, with ``allow_new``, add fresh embeddings for) elements the parent never saw;
    return the new elements."""
    if not model.elements:
        return []
    new = sorted(set(int(z) for z in data_elements) - set(model.elements))
    if not new:
        return []
    if not allow_new:
        raise FinetuneError(f"{where}: element(s) {_symbols(new)} never seen by the backbone (it knows "
                            f"{_symbols(model.elements)}); pass --allow-new-elements to give them fresh embeddings")
    known = torch.tensor(model.elements)
    for table in _embedding_tables(model):
        with torch.no_grad():
            std = float(table.weight[known].std()) if known.numel() > 1 else 1.0
            for z in new:
                table.weight[z].normal_(0.0, std if std > 0 else 1.0)
        table._matforge_new_rows = list(new)  # type: ignore[attr-defined]
    model.elements = sorted(set(model.elements) | set(new))
    return new


def record_training_elements(model: "AtomisticModel", data_elements: list[int]) -> None:
    """A model with a learned embedding table knows only the elements it was trained on: one whose
    parent had no list (scratch) records the data's, so a later run refuses others."""
    if not model.elements and _embedding_tables(model):
        model.elements = sorted(int(z) for z in data_elements)


def keep_new_embeddings_trainable(model: "AtomisticModel") -> list[torch.nn.Parameter]:
    """After freezing: embedding tables with fresh rows train those rows only (gradient mask).
    Returns the parameters re-enabled (train them without weight decay)."""
    enabled = []
    for table in _embedding_tables(model):
        rows = getattr(table, "_matforge_new_rows", None)
        if rows and not table.weight.requires_grad:
            mask = torch.zeros_like(table.weight)
            mask[rows] = 1.0
            table.weight.requires_grad_(True)
            table.weight.register_hook(lambda grad, m=mask: grad * m.to(grad.dtype))
            enabled.append(table.weight)
    return enabled


@torch.no_grad()
def model_energies_without_refs(model: "AtomisticModel", batches: Any) -> np.ndarray:
    """Total energies (eV) the model gives each structure of ``batches`` before element references."""
    from matforge.models.heads import sum_per_graph

    model.eval()
    out = []
    for batch in batches:
        energy = model(batch)["energy"]
        refs = sum_per_graph(model.element_refs.to(energy.dtype)[batch.z], batch.batch, int(batch.num_graphs))
        out.append((energy - refs).double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def refit_element_references(model: "AtomisticModel", numbers: list[np.ndarray], energies: np.ndarray,
                             model_energies: np.ndarray) -> dict[str, Any]:
    """Set ``model.element_refs`` to the least-squares fit of the residual energies (module
    docstring); return ``{"element_refs": {Z: eV}, "rank": r, "structures": M}``."""
    from matforge.models.fitting import composition_matrix, fit_element_references

    if len(numbers) == 0:
        raise FinetuneError("no training structure has an energy label: cannot refit the reference energies")
    compositions = []
    for z in numbers:
        zs, counts = np.unique(np.asarray(z), return_counts=True)
        compositions.append({int(a): int(c) for a, c in zip(zs, counts)})
    elements = sorted({z for comp in compositions for z in comp})
    a = composition_matrix(compositions, elements)
    refs, rank = fit_element_references(a, np.asarray(energies, dtype=np.float64) - np.asarray(model_energies))
    with torch.no_grad():
        for z, value in zip(elements, refs):
            model.element_refs[z] = float(value)
    return {"element_refs": {str(z): float(v) for z, v in zip(elements, refs)}, "rank": rank,
            "structures": len(numbers)}
