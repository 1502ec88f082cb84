"""Which weights a fine-tuning run trains, and at what learning rate.

The backbone's ``freeze_groups()`` lists ``embedding, block.0, block.1, ..., block.{n-1}`` (n
interaction blocks); the heads sit on top. A strategy is:

============  ===============================================================================
``full``      every weight trains at the base rate
``freeze:K``  the embedding and the first K blocks are frozen (0 ≤ K ≤ n); the other blocks and
              the head train (seed 0's protocol). With ``reinit_rest`` the unfrozen blocks are
              re-initialised instead of starting from the pre-trained weights.
``probe``     the whole backbone is frozen; only the head trains (a linear/MLP probe)
``lrdecay:F`` every weight trains; layer-wise learning-rate decay (0 < F ≤ 1): the head at the
              base rate η, block n−1 at η·F, block n−2 at η·F², ..., block 0 at η·Fⁿ and the
              embedding at η·Fⁿ⁺¹ (JMP's recipe)
============  ===============================================================================

Backbone weights outside every freeze group (none in the packaged architectures) train with the
head. Frozen modules are kept in eval mode while the rest trains (:meth:`Strategy.set_train_mode`),
so a frozen BatchNorm keeps its pre-trained running statistics instead of drifting with the new
data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from matforge.finetune.errors import FinetuneError

if TYPE_CHECKING:  # pragma: no cover
    from matforge.models.model import AtomisticModel

KINDS = ("full", "freeze", "probe", "lrdecay")


@dataclass
class Strategy:
    """A parsed strategy: ``kind`` and its argument (K for freeze, F for lrdecay)."""

    kind: str
    k: int = 0
    decay: float = 1.0
    reinit_rest: bool = False

    @classmethod
    def parse(cls, text: str, reinit_rest: bool = False) -> "Strategy":
        """``full`` | ``freeze:K`` | ``probe`` | ``lrdecay:F`` (see the module docstring)."""
        name, _, arg = str(text).strip().partition(":")
        try:
            if name == "full" and not arg:
                return cls("full", reinit_rest=reinit_rest)
            if name == "probe" and not arg:
                return cls("probe", reinit_rest=reinit_rest)
            if name == "freeze":
                k = int(arg)
                if k < 0:
                    raise ValueError
                return cls("freeze", k=k, reinit_rest=reinit_rest)
            if name == "lrdecay":
                f = float(arg)
                if not 0 < f <= 1:
                    raise ValueError
                return cls("lrdecay", decay=f, reinit_rest=reinit_rest)
        except ValueError:
            pass
        raise FinetuneError(f"strategy {text!r} is not one of: full, freeze:K (K >= 0 blocks), probe, "
                            "lrdecay:F (0 < F <= 1)")

    def __str__(self) -> str:
        base = {"full": "full", "probe": "probe", "freeze": f"freeze:{self.k}",
                "lrdecay": f"lrdecay:{self.decay:g}"}[self.kind]
        return base + (" (rest re-initialised)" if self.reinit_rest else "")

    # -- applying it -------------------------------------------------------------------------------
    def frozen_modules(self, model: "AtomisticModel") -> list[nn.Module]:
        groups = model.backbone.freeze_groups()
        blocks = len(groups) - 1
        if self.kind == "freeze" and self.k > blocks:
            raise FinetuneError(f"strategy freeze:{self.k}: the {model.backbone.arch} backbone has only {blocks} "
                                f"interaction block(s) (freeze:0..{blocks}, or probe)")
        if self.kind == "freeze":
            chosen = groups[: self.k + 1]
        elif self.kind == "probe":
            return [model.backbone]
        else:
            chosen = []
        return [m for _, modules in chosen for m in modules]

    def apply(self, model: "AtomisticModel", seed: int = 0) -> None:
        """Freeze what the strategy freezes (``requires_grad = False``) and, with ``reinit_rest``,
        re-initialise the backbone's unfrozen blocks (seeded)."""
        for p in model.parameters():
            p.requires_grad_(True)
        frozen = self.frozen_modules(model)
        for module in frozen:
            for p in module.parameters():
                p.requires_grad_(False)
        if self.reinit_rest:
            frozen_ids = {id(m) for m in frozen}
            with torch.random.fork_rng(devices=[]):  # the CPU generator only, restored afterwards
                torch.random.default_generator.manual_seed(seed)
                for name, modules in model.backbone.freeze_groups():
                    for module in modules:
                        if id(module) not in frozen_ids:
                            reset_parameters(module)
        self._frozen = frozen

    def set_train_mode(self, model: nn.Module, training: bool = True) -> None:
        """``model.train(training)``, then frozen modules back to eval mode (module docstring)."""
        model.train(training)
        if training:
            for module in getattr(self, "_frozen", []):
                module.eval()

    def parameter_groups(self, model: "AtomisticModel") -> list[dict[str, Any]]:
        """Optimiser parameter groups of the trainable weights, each with its ``lr_scale``."""
        trainable = [p for p in model.parameters() if p.requires_grad]
        if self.kind != "lrdecay":
            return [{"params": trainable, "lr_scale": 1.0, "name": "trainable"}]
        groups = model.backbone.freeze_groups()
        n = len(groups) - 1
        out: list[dict[str, Any]] = []
        seen: set[int] = set()
        for depth, (name, modules) in enumerate(groups):
            # embedding: depth 0 -> F^(n+1); block k: depth k+1 -> F^(n-k)
            scale = self.decay ** (n + 1 - depth)
            params = [p for m in modules for p in m.parameters() if p.requires_grad and id(p) not in seen]
            seen.update(id(p) for p in params)
            out.append({"params": params, "lr_scale": scale, "name": name})
        rest = [p for p in trainable if id(p) not in seen]
        out.append({"params": rest, "lr_scale": 1.0, "name": "head"})
        return [g for g in out if g["params"]]


def reset_parameters(module: nn.Module) -> None:
    """Re-initialise every submodule of ``module`` that has ``reset_parameters`` (its default init)."""
    for sub in module.modules():
        if sub is not module and hasattr(sub, "reset_parameters") and callable(sub.reset_parameters):
            sub.reset_parameters()
    if hasattr(module, "reset_parameters") and callable(module.reset_parameters):
        module.reset_parameters()


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) numbers of scalar weights."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total
