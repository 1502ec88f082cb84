"""How the backbones' element-wise kernels run: eager PyTorch, or fused by ``torch.compile``.

A module with hand-written derivatives (:mod:`matforge.models.gated_message`,
:mod:`matforge.models.pair_form_kernels`) writes each stage as a pure function of tensors and registers the
set with :func:`kernel_table`; it then calls ``table[name](...)``. :func:`set_kernel_mode` swaps every
registered table at once:

``eager``     one PyTorch operation per term (a full pass over memory each).
``compiled``  each stage through ``torch.compile(dynamic=True, fullgraph=True)``: one fused loop on a CPU
              (needs a C++ compiler), one Triton kernel on a GPU, so an (E, F) tensor is read and
              written once per stage instead of once per term. A compile failure raises.
``auto``      (default, or ``$MATFORGE_KERNELS``) compiled, falling back to eager for every table, with
              one warning, where compiling fails.

Compiling happens on a stage's first call with each *variant* of its arguments (which are None, the
dtypes and ranks of the tensors, the values of the flags), once per process (seconds on a small CPU;
PyTorch caches the result on disk). Each variant compiles a fresh copy of the stage's code object, so
that torch.compile's per-function limit on recompilations, which counts the variants of one code object
together, never sends a stage with many variants back to eager mode; sizes are dynamic within a variant. Kernels compute values only, inside an autograd
``Function`` whose derivatives are written out, so they are called with detached tensors.
"""

from __future__ import annotations

import os
import warnings
from typing import Callable

from torch import Tensor

KERNEL_MODES = ("auto", "compiled", "eager")
KERNEL_MODE_ENV = "MATFORGE_KERNELS"

Kernel = Callable[..., object]
_TABLES: list[tuple[dict[str, Kernel], dict[str, Kernel]]] = []   # (live table, its eager kernels)
_MODE = ["auto"]


def kernel_table(eager: dict[str, Kernel]) -> dict[str, Kernel]:
    """Register a set of eager kernels; returns the live table (name → kernel) for the current mode."""
    table = dict(eager)
    _TABLES.append((table, dict(eager)))
    _fill(table, eager, _MODE[0])
    return table


def set_kernel_mode(mode: str | None = None) -> str:
    """Choose how every registered kernel runs (module docstring); returns the mode asked for."""
    mode = mode or os.environ.get(KERNEL_MODE_ENV, "auto")
    if mode not in KERNEL_MODES:
        raise ValueError(f"kernel mode must be one of {KERNEL_MODES}, got {mode!r} (from ${KERNEL_MODE_ENV}?)")
    _MODE[0] = mode
    for table, eager in _TABLES:
        _fill(table, eager, mode)
    return mode


def current_kernel_mode() -> str:
    """``eager`` (asked for, or after a failed compile), ``compiled`` or ``auto``."""
    if all(table[name] is kernel for table, eager in _TABLES for name, kernel in eager.items()):
        return "eager"
    return _MODE[0]


def _fill(table: dict[str, Kernel], eager: dict[str, Kernel], mode: str) -> None:
    if mode == "eager":
        table.update(eager)
    else:
        table.update({name: _Compiled(kernel, strict=mode == "compiled") for name, kernel in eager.items()})


def _fall_back_to_eager() -> None:
    for table, eager in _TABLES:
        table.update(eager)


def _variant(args: tuple) -> tuple:
    """What tells the compiled variants of a stage apart (module docstring)."""
    return tuple((a.dtype, a.dim(), a.device.type) if isinstance(a, Tensor) else a for a in args)


def _fresh_copy(kernel: Kernel) -> Kernel:
    """The same function with its own code object (torch.compile keeps its cache on the code object)."""
    import types

    code = kernel.__code__.replace()
    return types.FunctionType(code, kernel.__globals__, kernel.__name__, kernel.__defaults__, kernel.__closure__)


class _Compiled:
    """A stage run through ``torch.compile`` from its first call, one compiled copy per variant of its
    arguments; where compiling fails (``strict=False``), every registered stage runs eagerly from then
    on, after one warning."""

    def __init__(self, kernel: Kernel, strict: bool) -> None:
        self.kernel, self.strict = kernel, strict
        self.variants: dict[tuple, Kernel] = {}

    def __call__(self, *args: Tensor | int | bool | None):
        # the kernels compute values only (autograd sees the Function around them): detached inputs keep
        # requires_grad out of the compiled function's guards, so training and no-grad calls share a compile
        args = tuple(a.detach() if isinstance(a, Tensor) else a for a in args)
        key = _variant(args)
        compiled = self.variants.get(key)
        if compiled is None:
            import torch

            compiled = self.variants[key] = torch.compile(_fresh_copy(self.kernel), dynamic=True, fullgraph=True)
        try:
            return compiled(*args)
        except Exception as err:  # noqa: BLE001 - any compiler failure: the eager stage computes the same
            if self.strict:
                raise
            first_line = str(err).splitlines()[0] if str(err) else ""
            warnings.warn(f"matforge: compiling the backbones' fused kernels failed ({type(err).__name__}: "
                          f"{first_line}); running them eagerly", stacklevel=2)
            _fall_back_to_eager()
            return self.kernel(*args)


set_kernel_mode()  # $MATFORGE_KERNELS, else auto; tables registered later take the current mode
