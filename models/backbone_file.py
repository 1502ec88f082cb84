"""The backbone file: a directory holding a model's weights (safetensors) and its card (JSON).

Layout of ``PATH/``::

    model.safetensors   the AtomisticModel's state_dict: backbone.*, heads.<name>.*, element_refs
    card.json           everything needed to rebuild the model without the code that trained it

Card (format version 1)::

    format            "matforge-backbone"
    format_version    1 (a reader refuses cards from newer versions)
    architecture      registry name of the backbone ("cgcnn", "cgcnn_smooth", "cgcnn_attention", "painn")
    hyperparameters   the backbone's constructor arguments (``backbone.hparams``)
    cutoff            neighbour cutoff in Å; max_neighbors: nearest-k limit or null
    featurisation     the graph builder's settings: {"cutoff", "max_neighbors", "dtype"}
                      (``GraphConfig(**featurisation)`` builds the graphs the model expects)
    elements          atomic numbers seen in training ([] = no restriction)
    heads             {name: head.spec()}; ``build_head`` rebuilds each one
    element_refs      101 reference energies in eV per atom, index = Z (also in the weights)
    normalizers       human-readable copy of the heads' target normalisers {head: {mean, std}}
    provenance        free dict: dataset manifest hash, objective, steps, metrics, source files...
    matforge_version, dtype ("float32" | "float64"), created (UTC ISO time)
    weights           {"file": "model.safetensors", "sha256": hex digest of that file}

:func:`save` writes into a temporary directory beside ``PATH`` and renames it into place, so a
crash never leaves a half-written backbone. :func:`load` never imports Ray or the pre-training
package; it refuses, with a message naming the file and the reason, a card that is not JSON or
lacks fields, a newer format version, an architecture or head kind it does not know,
hyper-parameters the architecture does not take, weights whose checksum differs from the card's,
and weights that do not match the architecture (missing, unexpected or mis-shaped tensors are named;
nothing is skipped silently).
"""

from __future__ import annotations

import datetime
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from matforge.datasets.errors import MatforgeDataError
from matforge.datasets.shards import file_sha256

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from matforge.models.model import AtomisticModel

FORMAT = "matforge-backbone"
FORMAT_VERSION = 1
CARD_FILE = "card.json"
WEIGHTS_FILE = "model.safetensors"
_SHOWN = 8  # names listed per kind of weight mismatch


class BackboneFileError(MatforgeDataError, ValueError):
    """A backbone file cannot be written or read; the message names the file and the reason."""


# --- writing ---------------------------------------------------------------------------------------


def _json_default(value: Any) -> Any:
    """Make numpy scalars/arrays, tensors and paths JSON-able; refuse anything else."""
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist") and hasattr(value, "dtype"):  # torch tensor
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def _dtype_name(model: "AtomisticModel") -> str:
    import torch

    for p in model.parameters():
        if p.is_floating_point():
            return {torch.float64: "float64", torch.float32: "float32"}.get(p.dtype, str(p.dtype).replace("torch.", ""))
    return "float32"



def _matforge_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("matforge")
    except PackageNotFoundError:
        return "unknown"


def build_card(model: "AtomisticModel", provenance: dict | None = None) -> dict[str, Any]:
    """The card of ``model`` (without the weights checksum, which :func:`save` adds)."""
    backbone = model.backbone
    dtype = _dtype_name(model)
    heads = {name: head.spec() for name, head in model.heads.items()}
    normalizers = {name: {"mean": spec["mean"], "std": spec["std"]} for name, spec in heads.items()
                   if "mean" in spec and "std" in spec and spec.get("task") != "classification"}
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": backbone.arch,
        "hyperparameters": dict(backbone.hparams),
        "cutoff": float(backbone.cutoff),
        "max_neighbors": backbone.max_neighbors,
        "featurisation": {"cutoff": float(backbone.cutoff), "max_neighbors": backbone.max_neighbors, "dtype": dtype},
        "elements": [int(z) for z in getattr(model, "elements", [])],
        "heads": heads,
        "element_refs": [float(v) for v in model.element_refs.detach().cpu().double().tolist()],
        "normalizers": normalizers,
        "provenance": dict(provenance or {}),
        "matforge_version": _matforge_version(),
        "dtype": dtype,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def save(model: "AtomisticModel", path: str | os.PathLike, provenance: dict | None = None) -> Path:
    """Write ``model`` as a backbone directory at ``path`` (replacing an earlier backbone there).

    provenance: JSON-able dict (dataset manifest hash, objective, steps, metrics, sources...).
    Refuses to replace a non-empty directory that is not a backbone. Returns the path.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise BackboneFileError(f"{path}: exists and is not a directory; refusing to overwrite it")
        if any(path.iterdir()) and not (path / CARD_FILE).is_file():
            raise BackboneFileError(f"{path}: a non-empty directory without {CARD_FILE}; "
                                    "refusing to overwrite something that is not a backbone")
    card = build_card(model, provenance)
    try:
        card_text = json.dumps(card, indent=2, default=_json_default, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise BackboneFileError(f"{path}: the card cannot be written as JSON ({exc}); "
                                "check provenance, hyper-parameters and head specs") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; a backbone is an ordinary directory
        tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION)})
        card = json.loads(card_text)
        card["weights"] = {"file": WEIGHTS_FILE, "sha256": file_sha256(tmp / WEIGHTS_FILE)}
        with open(tmp / CARD_FILE, "w", encoding="utf-8") as f:
            f.write(json.dumps(card, indent=2, allow_nan=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        for name in (WEIGHTS_FILE, CARD_FILE):
            os.chmod(tmp / name, 0o666 & ~umask)
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            os.replace(path, old / "backbone")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


# --- reading ---------------------------------------------------------------------------------------


def _directory(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.is_file() and path.name == CARD_FILE:
        path = path.parent
    if not path.exists():
        raise BackboneFileError(f"{path}: no such backbone directory")
    if not path.is_dir():
        raise BackboneFileError(f"{path}: not a backbone directory (expected a directory with {CARD_FILE} "
                                f"and {WEIGHTS_FILE})")
    return path


def _require(card: dict, key: str, kind: type | tuple[type, ...], card_path: Path) -> Any:
    if key not in card:
        raise BackboneFileError(f"{card_path}: corrupt card: no {key!r} field")
    value = card[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise BackboneFileError(f"{card_path}: corrupt card: {key!r} is {type(value).__name__}, "
                                f"expected {getattr(kind, '__name__', kind)}")
    return value


def read_card(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check the card of the backbone directory ``path`` (or of its ``card.json``)."""
    directory = _directory(path)
    card_path = directory / CARD_FILE
    try:
        text = card_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BackboneFileError(f"{directory}: no {CARD_FILE}; not a matforge backbone") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BackboneFileError(f"{card_path}: cannot read the card ({exc})") from None
    try:
        card = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BackboneFileError(f"{card_path}: corrupt card: not valid JSON ({exc})") from None
    if not isinstance(card, dict):
        raise BackboneFileError(f"{card_path}: corrupt card: expected a JSON object, got {type(card).__name__}")
    if card.get("format") != FORMAT:
        raise BackboneFileError(f"{card_path}: not a matforge backbone card (format is {card.get('format')!r}, "
                                f"expected {FORMAT!r})")
    version = _require(card, "format_version", int, card_path)
    if version > FORMAT_VERSION:
        raise BackboneFileError(f"{card_path}: written in backbone format version {version}, newer than this "
                                f"matforge ({_matforge_version()}) reads (up to {FORMAT_VERSION}); upgrade matforge")
    if version < 1:
        raise BackboneFileError(f"{card_path}: corrupt card: format_version {version} is not a valid version")
    _require(card, "architecture", str, card_path)
    _require(card, "hyperparameters", dict, card_path)
    heads = _require(card, "heads", dict, card_path)
    for name, spec in heads.items():
        if not isinstance(spec, dict) or not isinstance(spec.get("kind"), str):
            raise BackboneFileError(f"{card_path}: corrupt card: head {name!r} has no spec with a 'kind'")
    elements = _require(card, "elements", list, card_path)
    if not all(isinstance(z, int) and not isinstance(z, bool) and 1 <= z <= 100 for z in elements):
        raise BackboneFileError(f"{card_path}: corrupt card: 'elements' must be atomic numbers 1..100")
    refs = _require(card, "element_refs", list, card_path)
    if len(refs) != 101 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in refs):
        raise BackboneFileError(f"{card_path}: corrupt card: 'element_refs' must be 101 finite numbers (index = Z)")
    dtype = card.get("dtype", "float32")
    if dtype not in ("float32", "float64"):
        raise BackboneFileError(f"{card_path}: corrupt card: dtype {dtype!r} is not float32 or float64")
    return card


def _check_weights(weights: dict[str, "torch.Tensor"], expected: dict[str, "torch.Tensor"], architecture: str,
                   weights_path: Path) -> None:
    def listing(names: list[str]) -> str:
        shown = ", ".join(names[:_SHOWN])
        return shown + (f" (+{len(names) - _SHOWN} more)" if len(names) > _SHOWN else "")

    problems = []
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    shapes = sorted(k for k in set(expected) & set(weights) if tuple(weights[k].shape) != tuple(expected[k].shape))
    if missing:
        problems.append(f"missing {len(missing)} tensor(s): {listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensor(s): {listing(unexpected)}")
    if shapes:
        detail = [f"{k} {tuple(weights[k].shape)} vs {tuple(expected[k].shape)}" for k in shapes]
        problems.append(f"{len(shapes)} mis-shaped tensor(s) (file vs architecture): {listing(detail)}")
    if problems:
        raise BackboneFileError(f"{weights_path}: the weights do not match the card's architecture "
                                f"{architecture!r} and its hyper-parameters: " + "; ".join(problems))


def load(path: str | os.PathLike, map_location: Any = "cpu") -> "AtomisticModel":
    """Rebuild the :class:`AtomisticModel` saved at ``path``, in eval mode, on ``map_location``.

    The card is available afterwards as ``model.card``. Raises :class:`BackboneFileError` for
    every refusal listed in the module docstring.
    """
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from matforge.models.heads import build_head
    from matforge.models.model import AtomisticModel
    from matforge.models.registry import ARCHITECTURES, backbone_class

    directory = _directory(path)
    card = read_card(directory)
    card_path = directory / CARD_FILE
    architecture = card["architecture"]
    if architecture not in ARCHITECTURES:
        raise BackboneFileError(f"{card_path}: unknown architecture {architecture!r} "
                                f"(this matforge knows {', '.join(ARCHITECTURES)})")
    try:
        backbone = backbone_class(architecture)(**card["hyperparameters"])
    except (TypeError, ValueError) as exc:
        raise BackboneFileError(f"{card_path}: the hyper-parameters do not fit architecture {architecture!r} ({exc})") from None
    heads = {}
    for name, spec in card["heads"].items():
        try:
            heads[name] = build_head(spec)
        except (TypeError, ValueError) as exc:
            raise BackboneFileError(f"{card_path}: cannot rebuild head {name!r} ({exc})") from None
    model = AtomisticModel(backbone, heads, elements=card["elements"])
    if card.get("dtype", "float32") == "float64":
        model = model.double()

    weights_path = directory / WEIGHTS_FILE
    if not weights_path.is_file():
        raise BackboneFileError(f"{directory}: no {WEIGHTS_FILE}")
    recorded = (card.get("weights") or {}).get("sha256") if isinstance(card.get("weights"), dict) else None
    if recorded is not None and file_sha256(weights_path) != recorded:
        raise BackboneFileError(f"{weights_path}: the weights file differs from the one the card describes "
                                "(sha256 mismatch): corrupt or replaced")
    try:
        weights = load_file(str(weights_path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise BackboneFileError(f"{weights_path}: cannot read the weights ({exc})") from None
    _check_weights(weights, model.state_dict(), architecture, weights_path)
    model.load_state_dict(weights, strict=True)

    card_refs = torch.tensor(card["element_refs"], dtype=torch.float64)
    if not torch.allclose(model.element_refs.double(), card_refs, rtol=1e-6, atol=1e-6):
        raise BackboneFileError(f"{card_path}: element_refs in the card differ from those in {WEIGHTS_FILE}")
    model.card = card
    return model.to(map_location).eval()
