"""Import a released CGCNN checkpoint (``*.pth.tar`` of github.com/txie-93/cgcnn) as a matforge backbone.

A checkpoint is a ``torch.save`` dict with ``state_dict`` (the reference ``CrystalGraphConvNet``'s
weights), ``normalizer`` ({"mean", "std"} of the regression target), ``args`` (the training
hyper-parameters: ``atom_fea_len``, ``n_conv``, ``h_fea_len``, ``n_h``, ``task``, ``data_options``...)
and training bookkeeping (``epoch``, ``best_mae_error``, ``optimizer``).

Reading is pickle-free in the dangerous sense: ``torch.load(weights_only=True)``, which builds only
tensors and plain containers. Some released files also hold a numpy float (the classifier's
``best_mae_error``) or an ``argparse.Namespace``; for those, and only those, the loader allows
exactly these inert globals: numpy's scalar constructor (under the name the file uses),
``numpy.dtype`` and its float64 class, and ``argparse.Namespace``. Nothing is ever loaded with
``weights_only=False``.

Mapping: the reference parameter names are matforge's (see :mod:`matforge.models.cgcnn`):
``embedding.*`` and ``convs.*`` go to ``backbone.*``; ``conv_to_fc.*``, ``fcs.*``, ``fc_out.*`` to
``heads.cgcnn.*``. BatchNorm's ``num_batches_tracked`` (absent from files written by PyTorch < 0.4)
is set to 0; any other missing, unexpected or mis-shaped tensor is an error naming it.
The featurisation is the reference's: cutoff 8 Å (``args.radius`` if present), 12 neighbours
(``args.max_num_nbr``), Gaussian step 0.2 Å (``args.step``), padding of short neighbour lists.
"""

from __future__ import annotations

import argparse
import os
import pickle  # only for pickle.UnpicklingError, raised by torch.load(weights_only=True) on a refusal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from matforge.datasets.errors import MatforgeDataError
from matforge.datasets.shards import file_sha256

if TYPE_CHECKING:  # pragma: no cover
    from matforge.models.model import AtomisticModel

HEAD_NAME = "cgcnn"
BACKBONE_PREFIXES = ("embedding.", "convs.")
HEAD_PREFIXES = ("conv_to_fc.", "fcs.", "fc_out.")

# Units of the released models' targets (``args.data_options[2]``), from the release's README.
# (The README lists the Fermi energy as eV/atom; a Fermi level is an energy, so it is eV here.)
RELEASED_UNITS = {
    "formation_energy_per_atom": "eV/atom",
    "final_energy_per_atom": "eV/atom",
    "band_gap": "eV",
    "efermi": "eV",
    "bulk_moduli": "log10(GPa)",
    "shear_moduli": "log10(GPa)",
    "poisson_ratio": "dimensionless",
    "metal_semi": "probability of class 1 (metal; class 0 is semiconductor)",
}
REFERENCE = "T. Xie and J. C. Grossman, Phys. Rev. Lett. 120, 145301 (2018); github.com/txie-93/cgcnn (MIT)"


class CgcnnImportError(MatforgeDataError, ValueError):
    """A CGCNN checkpoint cannot be imported; the message names the file and the reason."""


def _allowed_globals() -> list[Any]:
    """The inert non-tensor globals some released checkpoints contain (see module docstring)."""
    import numpy as np

    try:
        from numpy._core.multiarray import scalar  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import scalar
    return [(scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar"),
            np.dtype, type(np.dtype(np.float64)), argparse.Namespace]


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a CGCNN checkpoint safely (``weights_only=True``); check it has ``state_dict`` and ``args``.

    ``args`` is returned as a plain dict. Raises :class:`CgcnnImportError`.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise CgcnnImportError(f"{path}: no such checkpoint file")
    try:
        try:
            checkpoint = torch.load(path, weights_only=True, map_location="cpu")
        except pickle.UnpicklingError:
            with torch.serialization.safe_globals(_allowed_globals()):
                checkpoint = torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        first = str(exc).split("WeightsUnpickler error:")[-1].strip().splitlines()[0][:300]
        if "global" not in first.lower():  # not a refused object: the bytes are not a pickle
            raise CgcnnImportError(f"{path}: not a readable PyTorch checkpoint ({first})") from None
        raise CgcnnImportError(f"{path}: refused to unpickle a non-tensor object ({first}); "
                               "only weights and plain values can be imported") from None
    except Exception as exc:  # torch raises RuntimeError, EOFError, zipfile errors... on bad files
        raise CgcnnImportError(f"{path}: not a readable PyTorch checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(checkpoint, dict):
        raise CgcnnImportError(f"{path}: expected a dict checkpoint, got {type(checkpoint).__name__}")
    for key in ("state_dict", "args"):
        if key not in checkpoint:
            raise CgcnnImportError(f"{path}: not a CGCNN checkpoint (no {key!r}; keys: {sorted(checkpoint)})")
    args = checkpoint["args"]
    if isinstance(args, argparse.Namespace):
        args = vars(args)
    if not isinstance(args, dict):
        raise CgcnnImportError(f"{path}: 'args' is {type(args).__name__}, expected the hyper-parameter dict")
    state = checkpoint["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CgcnnImportError(f"{path}: 'state_dict' is not a dict of tensors")
    return {**checkpoint, "args": dict(args)}


def _hyperparameter(args: dict, name: str, default: Any, path: Path) -> Any:
    value = args.get(name, default)
    if value is None:
        raise CgcnnImportError(f"{path}: args has no {name!r}")
    return value


def _plain(value: Any) -> Any:
    """JSON-able copy of the checkpoint's args (numpy scalars -> Python numbers, others -> str)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "item"):
        return value.item()
    return str(value)



def convert_checkpoint(path: str | os.PathLike) -> tuple["AtomisticModel", dict[str, Any]]:
    """The released model at ``path`` as an :class:`AtomisticModel` (eval mode) and its provenance."""
    import torch

    from matforge.models.cgcnn import CGCNN, CGCNNHead
    from matforge.models.model import AtomisticModel

    path = Path(path)
    checkpoint = read_checkpoint(path)
    args = checkpoint["args"]
    state = {k.removeprefix("module."): v for k, v in checkpoint["state_dict"].items()}  # DataParallel

    task = _hyperparameter(args, "task", "regression", path)
    if task not in ("regression", "classification"):
        raise CgcnnImportError(f"{path}: unknown task {task!r} (expected regression or classification)")
    options = args.get("data_options") or []
    target = str(options[2]) if len(options) > 2 else ("class" if task == "classification" else "target")
    normalizer = checkpoint.get("normalizer") or {"mean": 0.0, "std": 1.0}
    try:
        mean, std = float(normalizer["mean"]), float(normalizer["std"])
    except (KeyError, TypeError, ValueError):
        raise CgcnnImportError(f"{path}: 'normalizer' must hold numbers 'mean' and 'std', got {normalizer!r}") from None

    try:
        backbone = CGCNN(atom_fea_len=int(_hyperparameter(args, "atom_fea_len", 64, path)),
                         n_conv=int(_hyperparameter(args, "n_conv", 3, path)),
                         cutoff=float(args.get("radius", 8.0)), max_neighbors=int(args.get("max_num_nbr", 12)),
                         gaussian_step=float(args.get("step", 0.2)), gaussian_dmin=float(args.get("dmin", 0.0)),
                         pad_neighbors=True)
        head = CGCNNHead(in_dim=backbone.embedding_dim, h_fea_len=int(_hyperparameter(args, "h_fea_len", 128, path)),
                         n_h=int(_hyperparameter(args, "n_h", 1, path)), task=task, mean=mean, std=std,
                         target=target, units=RELEASED_UNITS.get(target, ""))
    except ValueError as exc:
        raise CgcnnImportError(f"{path}: hyper-parameters cannot build CGCNN ({exc})") from None
    model = AtomisticModel(backbone, {HEAD_NAME: head})

    mapped: dict[str, torch.Tensor] = {}
    unexpected = []
    for key, tensor in state.items():
        if key.startswith(BACKBONE_PREFIXES):
            mapped[f"backbone.{key}"] = tensor
        elif key.startswith(HEAD_PREFIXES):
            mapped[f"heads.{HEAD_NAME}.{key}"] = tensor
        else:
            unexpected.append(key)
    expected = model.state_dict()
    for key in expected:
        if key not in mapped and key.endswith(".num_batches_tracked"):
            mapped[key] = torch.zeros_like(expected[key])
    # set by the constructors from the checkpoint's normalizer (and zero reference energies)
    built = {"element_refs", f"heads.{HEAD_NAME}.mean", f"heads.{HEAD_NAME}.std"}
    unexpected += [k for k in mapped if k not in expected]
    missing = [k for k in expected if k not in mapped and k not in built]
    shapes = [f"{k} {tuple(mapped[k].shape)} vs {tuple(expected[k].shape)}" for k in expected
              if k in mapped and mapped[k].shape != expected[k].shape]
    if unexpected or missing or shapes:
        parts = [f"{name}: {', '.join(keys)}" for name, keys in
                 (("unexpected", unexpected), ("missing", missing), ("mis-shaped (file vs model)", shapes)) if keys]
        raise CgcnnImportError(f"{path}: the state_dict does not fit CGCNN(atom_fea_len={backbone.embedding_dim}, "
                               f"n_conv={len(backbone.convs)}, 92 element features, "
                               f"{backbone.expansion.num_features} Gaussians) with this head: " + "; ".join(parts))
    mapped.update({k: expected[k] for k in built})
    model.load_state_dict(mapped, strict=True)
    model.eval()

    provenance = {
        "source": "released CGCNN model",
        "reference": REFERENCE,
        "source_file": path.name,
        "source_sha256": file_sha256(path),
        "objective": f"supervised {task} of {target}",
        "target": target,
        "units": RELEASED_UNITS.get(target, ""),
        "epoch": _plain(checkpoint.get("epoch")),
        "best_mae_error": _plain(checkpoint.get("best_mae_error")),
        "original_args": _plain(args),
    }
    return model, provenance


def import_cgcnn(checkpoint: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Convert a released CGCNN checkpoint into a matforge backbone directory ``out``."""
    from matforge.models.backbone_file import save

    model, provenance = convert_checkpoint(checkpoint)
    return save(model, out, provenance=provenance)
