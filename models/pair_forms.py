"""PaiNN's messages as the gradients of one multilinear form over atom pairs, evaluated in blocks of pairs.

Every message sum of PaiNN (:mod:`matforge.models.painn`) has the shape, for pairs ``p = (k_p → o_p)``
(the atom ``k_p`` it reads, the row ``o_p`` it adds into)::

    Y_n = Σ_{p: o_p = n} X_p ⊙ [d_p ⊗] b_{k_p},        X_p = R_p Wᵀ

with radial features ``R`` per pair, (P, K) or (P, 3, K); filter weights ``W`` (F, K); an optional unit
direction ``d`` (P, 3); and rows ``b`` per atom, (N, F) or (N, 3, F); ``⊙`` is the channel-wise product,
broadcast over the Cartesian axis ``c`` where a factor has none. ``Y`` is the gradient with respect to
``G`` of the form::

    L(R, W, d, b, G) = Σ_p Σ_{c, f} X_p[(c), f] · d_p[c] · b_{k_p}[(c), f] · G_{o_p}[(c), f]

(``(c)``: the factor is broadcast over ``c`` if it has no such axis; without ``d`` the factor is 1). L is
linear in each of its five *slots*, so every derivative of a slot gradient is again a slot gradient:
the gradient of ``∂L/∂s`` with respect to slot ``t``, contracted with an upstream gradient ``H`` shaped
like slot ``s``, is ``∂L/∂t`` with ``H`` put in slot ``s``. With ``⟨·⟩_T`` the product summed over the
axes that slot ``T`` lacks, the five slot gradients are::

    ∂L/∂G_n = Σ_{p: o_p = n} ⟨X_p d_p b_{k_p}⟩_G                    (rows, [3,] F)   scatter by o
    ∂L/∂b_n = Σ_{p: k_p = n} ⟨X_p d_p G_{o_p}⟩_b                    (N, [3,] F)      scatter by k
    ∂L/∂R_p = ⟨d_p b_{k_p} G_{o_p}⟩_X W                             (P, [3,] K)
    ∂L/∂W   = Σ_p ⟨d_p b_{k_p} G_{o_p}⟩_Xᵀ R_p                      (F, K)
    ∂L/∂d_p = Σ_f X_p b_{k_p} G_{o_p}                               (P, 3)

The four cases PaiNN uses (the ranks of R, b, G and whether d is given) are fixed for a form and
survive differentiation: ``scalar`` (X (P, F), b, G (., F): the x^s message), ``rows`` (X (P, F),
b, G (., 3, F): x^vv ⊙ v_j), ``pair_direction`` (R (P, 3, K) so X (P, 3, F), b (N, F), G (., 3, F):
the direction message summed per pair) and ``edge_direction`` (X (P, F), d, b (N, F), G (., 3, F):
the direction message per edge).

Blocks: the pairs are processed in consecutive blocks of at most :func:`block_rows` pairs. For a block,
one fused kernel (:mod:`matforge.models.pair_form_kernels`, run as :mod:`matforge.models.kernel_mode`
says: a C++ loop on a CPU, a Triton kernel on a GPU) forms ``X`` from the block's ``R`` and ``W`` and the products with the gathered atom rows; the block's
terms are then added into the result (``index_add_``, in block order, so the sum is deterministic on a
CPU) or, for ``∂L/∂R`` and ``∂L/∂W``, contracted with ``W`` or ``R``. Nothing of size (P, F) or (P, 3, F)
is ever held for the whole batch: the forward pass and all its derivatives store, per pair, only
``R`` (K or 3K numbers) and ``d``, and each pass over the pairs reads R, the indices and the atom rows
once and writes atom rows or (P, K). The block bounds the temporaries so that they stay in the
processor's cache (and in memory the C allocator reuses rather than fresh pages from the OS) on a CPU,
and bounds transient memory while keeping kernels large on a GPU.

Tests: values and ``gradcheck``/``gradgradcheck`` of every slot and case against autograd on the plain
expression in float64, eager and compiled, with blocks smaller than the pair count; a third derivative.
"""

from __future__ import annotations

import torch
from torch import Tensor

from matforge.models.gradient_scope import wanted
from matforge.models.pair_form_kernels import many_kernels, slot_kernels, sum_kernels

SLOTS = ("radial", "weight", "direction", "source", "target")   # R, W, d, b, G
GEOMETRY_SLOTS = ("radial", "direction")
CASES = {   # case: (rank of R, has d, rank of b, rank of G)
    "scalar": (2, False, 2, 2),
    "rows": (2, False, 3, 3),
    "pair_direction": (3, False, 2, 3),
    "edge_direction": (2, True, 2, 3),
}
BLOCK_BYTES = {"cpu": 4 * 2**20}   # bytes of the largest per-block temporary; other devices: DEFAULT_BLOCK_BYTES
DEFAULT_BLOCK_BYTES = 512 * 2**20


def block_rows(width: int, dtype: torch.dtype, device: torch.device) -> int:
    """Pairs per block: the largest temporary, (block, 3, F) of ``dtype``, fits the device's budget."""
    budget = BLOCK_BYTES.get(device.type, DEFAULT_BLOCK_BYTES)
    itemsize = torch.empty((), dtype=dtype).element_size()
    return max(1, budget // (3 * max(1, width) * itemsize))


def _blocks(count: int, size: int):
    return ((start, min(start + size, count)) for start in range(0, count, size))


class _Results:
    """The slot gradients being built, block by block (module docstring: how each slot is accumulated)."""

    def __init__(self, slots, case: str, inputs: dict[str, Tensor], pairs: int, rows: int, atoms: int) -> None:
        r_rank, _, b_rank, g_rank = CASES[case]
        known = next(t for t in inputs.values())
        w, r = inputs.get("weight"), inputs.get("radial")
        width = w.shape[0] if w is not None else next(inputs[n] for n in ("source", "target") if n in inputs).shape[-1]
        radial_width = w.shape[1] if w is not None else r.shape[-1]
        shapes = {"target": (rows, 3, width) if g_rank == 3 else (rows, width),
                  "source": (atoms, 3, width) if b_rank == 3 else (atoms, width),
                  "radial": (pairs, 3, radial_width) if r_rank == 3 else (pairs, radial_width),
                  "weight": (radial_width, width), "direction": (pairs, 3)}   # weight: built transposed
        self.out = {slot: known.new_zeros(shapes[slot]) for slot in slots}
        self.weight, self.radial, self.width = w, r, width
        self.step = block_rows(width, known.dtype, known.device)   # pairs per block

    def add(self, slot: str, value: Tensor, s: int, e: int, out_index: Tensor, read_index: Tensor,
            radial: Tensor | None = None) -> None:
        """Fold one block's value into ``slot``: terms of G or b, ⟨d b G⟩_X for R or W (contracted with
        ``radial``, default the form's R), or ∂L/∂d."""
        out = self.out[slot]
        if slot == "target":
            out.index_add_(0, out_index[s:e], value)
        elif slot == "source":
            out.index_add_(0, read_index[s:e], value)
        elif slot == "radial":
            out[s:e] = torch.matmul(value, self.weight)
        elif slot == "weight":   # (Σ_p R_pᵀ ⟨·⟩_X,p), the order of the product BLAS runs fastest
            r = (self.radial if radial is None else radial)[s:e]
            out.addmm_(r.reshape(-1, r.shape[-1]).t(), value.reshape(-1, self.width))
        else:
            out[s:e] = value

    def results(self) -> dict[str, Tensor]:
        return {slot: out.t().contiguous() if slot == "weight" else out for slot, out in self.out.items()}


def evaluate(slot: str, case: str, inputs: dict[str, Tensor], out_index: Tensor, read_index: Tensor,
             rows: int, atoms: int) -> Tensor:
    """``∂L/∂slot`` for ``case`` from the other slots in ``inputs`` (module docstring), block by block.

    out_index (P,) = o, read_index (P,) = k; ``rows`` rows of G, ``atoms`` rows of b."""
    if slot not in SLOTS:
        raise ValueError(f"unknown slot {slot!r}; slots are {SLOTS}")
    r, w, d, b, g = (inputs.get(name) for name in SLOTS)
    pairs = out_index.shape[0]
    results = _Results((slot,), case, inputs, pairs, rows, atoms)
    extra = (d,) if d is not None else ()
    kernel = slot_kernels[{"target": "G_", "source": "b_", "radial": "X_", "weight": "X_", "direction": "d_"}[slot] + case]
    for s, e in _blocks(pairs, results.step):
        block_extra = tuple(t[s:e] for t in extra)
        if slot == "target":
            value = kernel(r[s:e], w, *block_extra, b, read_index[s:e])
        elif slot == "source":
            value = kernel(r[s:e], w, *block_extra, g, out_index[s:e])
        elif slot == "direction":
            value = kernel(r[s:e], w, b, g, out_index[s:e], read_index[s:e])
        else:
            value = kernel(*block_extra, b, g, out_index[s:e], read_index[s:e])
        results.add(slot, value, s, e, out_index, read_index)
    return results.results()[slot]


def evaluate_many(slots, case: str, inputs: dict[str, Tensor], out_index: Tensor, read_index: Tensor,
                  rows: int, atoms: int) -> dict[str, Tensor]:
    """``∂L/∂s`` for every slot ``s`` in ``slots``, all five slots of ``inputs`` given, in one pass over the
    pairs (values only: the results are not differentiable)."""
    r, w, d, b, g = (inputs.get(name) for name in SLOTS)
    pairs = out_index.shape[0]
    results = _Results(slots, case, inputs, pairs, rows, atoms)
    has_d = CASES[case][1]
    flags = ("target" in slots, "source" in slots, "radial" in slots or "weight" in slots)
    flags += ("direction" in slots,) if has_d else ()
    for s, e in _blocks(pairs, results.step):
        block_d = (d[s:e],) if has_d else ()
        values = many_kernels["many_" + case](r[s:e], w, *block_d, b, g, out_index[s:e], read_index[s:e], *flags)
        named = dict(zip(("target", "source", "radial", "direction") if has_d else ("target", "source", "radial"),
                         values))
        named["weight"] = named["radial"]
        for slot in slots:
            results.add(slot, named[slot], s, e, out_index, read_index)
    return results.results()


def evaluate_substituted(slots, case: str, inputs: dict[str, Tensor], upstream: dict[str, Tensor],
                         out_index: Tensor, read_index: Tensor, rows: int, atoms: int) -> dict[str, Tensor]:
    """For every slot ``t`` in ``slots``: ``Σ_{s ≠ t} ∂L/∂t`` with ``upstream[s]`` put in slot ``s`` and
    ``inputs`` in the others, in one pass over the pairs (values only). This is the derivative of a node
    that computed ``∂L/∂s`` for each ``s`` of ``upstream`` (:class:`_SlotGradients`). The weight slot
    cannot be among the replaced ones."""
    if "weight" in upstream:
        raise ValueError("evaluate_substituted: the weight slot cannot be replaced")
    r, w, d, b, g = (inputs.get(name) for name in SLOTS)
    hr, hd, hb, hg = (upstream.get(name) for name in ("radial", "direction", "source", "target"))
    pairs = out_index.shape[0]
    results = _Results(slots, case, {**upstream, **inputs}, pairs, rows, atoms)   # the form's own R first
    want_weight = "weight" in slots
    want = ("target" in slots, "source" in slots, "radial" in slots or (want_weight and r is not None),
            want_weight and hr is not None, "direction" in slots)
    block = lambda t, s, e: None if t is None else t[s:e]   # noqa: E731 - the per-pair slots of a block
    for s, e in _blocks(pairs, results.step):
        t_g, t_b, x_terms, hx_terms, t_d = sum_kernels["sum_" + case](
            block(r, s, e), w, block(d, s, e), b, g, block(hr, s, e), block(hd, s, e), hb, hg,
            out_index[s:e], read_index[s:e], want)
        named = {"target": t_g, "source": t_b, "radial": x_terms, "direction": t_d}
        for slot in slots:
            if slot == "weight":   # the terms with the form's R, and the one with H_R in its place
                if x_terms is not None and r is not None:
                    results.add("weight", x_terms, s, e, out_index, read_index)
                if hx_terms is not None:
                    results.add("weight", hx_terms, s, e, out_index, read_index, radial=hr)
            elif named[slot] is not None:
                results.add(slot, named[slot], s, e, out_index, read_index)
    return results.results()


class _SlotGradients(torch.autograd.Function):
    """``∂L/∂s`` for each slot ``s`` of ``slots`` as one graph node: its derivative with respect to slot
    ``t``, given upstream gradients ``H_s``, is ``Σ_{s ≠ t} ∂L/∂t`` with ``H_s`` put in slot ``s`` (module
    docstring; ``∂L/∂s`` does not depend on slot ``s``)."""

    @staticmethod
    def forward(ctx, slots: tuple[str, ...], case: str, geometric: bool, out_index: Tensor, read_index: Tensor,
                rows: int, atoms: int, radial: Tensor | None, weight: Tensor | None, direction: Tensor | None,
                source: Tensor | None, target: Tensor | None) -> tuple[Tensor, ...]:
        inputs = {name: t for name, t in zip(SLOTS, (radial, weight, direction, source, target)) if t is not None}
        ctx.set_materialize_grads(False)
        ctx.slots, ctx.case, ctx.geometric, ctx.rows, ctx.atoms = slots, case, geometric, rows, atoms
        ctx.names = tuple(inputs)
        ctx.save_for_backward(out_index, read_index, *inputs.values())
        values = _values(slots, case, inputs, out_index, read_index, rows, atoms)
        return tuple(values[slot] for slot in slots)

    @staticmethod
    def backward(ctx, *upstreams: Tensor | None):
        out_index, read_index, *saved = ctx.saved_tensors
        inputs = dict(zip(ctx.names, saved))
        asked = [name for position, name in enumerate(SLOTS)
                 if name in inputs and ctx.needs_input_grad[7 + position] and _read(name, ctx.geometric)]
        grads: dict[str, Tensor] = {}
        given = {slot: up.contiguous() for slot, up in zip(ctx.slots, upstreams) if up is not None}
        if not torch.is_grad_enabled() and "weight" not in given:   # values only: one pass for everything
            reached = [name for name in asked if any(slot != name for slot in given)]
            if not reached:
                return (None,) * 12
            grads = evaluate_substituted(reached, ctx.case, inputs, given, out_index, read_index, ctx.rows, ctx.atoms)
            return (None,) * 7 + tuple(grads.get(name) for name in SLOTS)
        for slot, upstream in zip(ctx.slots, upstreams):
            wanted_here = [name for name in asked if name != slot]
            if upstream is None or not wanted_here:
                continue
            full = dict(inputs)
            full[slot] = upstream.contiguous()
            parts = slot_gradients(wanted_here, ctx.case, full, out_index, read_index, ctx.rows, ctx.atoms,
                                   ctx.geometric)
            for name, part in parts.items():
                grads[name] = part if name not in grads else grads[name] + part
        return (None,) * 7 + tuple(grads.get(name) for name in SLOTS)


def _values(slots, case: str, inputs: dict[str, Tensor], out_index: Tensor, read_index: Tensor, rows: int,
            atoms: int) -> dict[str, Tensor]:
    if len(slots) == 1:
        return {slots[0]: evaluate(slots[0], case, inputs, out_index, read_index, rows, atoms)}
    return evaluate_many(slots, case, inputs, out_index, read_index, rows, atoms)


def _read(slot: str, geometric: bool) -> bool:
    """Whether the backward pass running now reads this slot's gradient (:mod:`~matforge.models.gradient_scope`):
    the weight slot holds weights; the radial and direction slots hold geometry when ``geometric``."""
    if slot == "weight":
        return wanted("weights")
    if geometric and slot in GEOMETRY_SLOTS:
        return wanted("geometry")
    return True


def slot_gradients(slots, case: str, inputs: dict[str, Tensor], out_index: Tensor, read_index: Tensor,
                   rows: int, atoms: int, geometric: bool = False) -> dict[str, Tensor]:
    """``∂L/∂s`` for every slot ``s`` in ``slots`` from the slots in ``inputs``, in one pass over the pairs;
    differentiable to any order when grad mode is on. With two or more slots, ``inputs`` holds all five
    (each gradient needs the others' slots); with one, its own slot is not read. ``geometric``: the
    radial and direction slots are computed from positions and cells alone (see :func:`pair_message`)."""
    slots = tuple(slots)
    if len(slots) == 1:
        inputs = {name: t for name, t in inputs.items() if name != slots[0]}
    if not torch.is_grad_enabled():
        return _values(slots, case, inputs, out_index, read_index, rows, atoms)
    ordered = [inputs.get(name) for name in SLOTS]
    outputs = _SlotGradients.apply(slots, case, bool(geometric), out_index, read_index, int(rows), int(atoms),
                                   *ordered)
    return dict(zip(slots, outputs))


def form_case(radial: Tensor, source: Tensor, direction: Tensor | None) -> str:
    """The case of a message with these radial features, atom rows and direction (module docstring)."""
    key = (radial.dim(), direction is not None, source.dim())
    for case, (r_rank, has_d, b_rank, _) in CASES.items():
        if (r_rank, has_d, b_rank) == key:
            return case
    raise ValueError(f"no pair form for radial features of rank {radial.dim()}, atom rows of rank "
                     f"{source.dim()} {'with' if direction is not None else 'without'} a direction")


def pair_message(radial: Tensor, weight: Tensor, source: Tensor, out_index: Tensor, read_index: Tensor,
                 rows: int, direction: Tensor | None = None, geometric: bool = False) -> Tensor:
    """``Y_n = Σ_{p: out_index[p] = n} (radial_p weightᵀ) ⊙ [direction_p ⊗] source[read_index[p]]``.

    radial: (P, K) or (P, 3, K); weight: (F, K); source: (N, F) or (N, 3, F); direction: (P, 3) or None;
    out_index, read_index: (P,) int64. Returns (rows, F) for the scalar case, else (rows, 3, F).
    ``geometric=True`` declares that ``radial`` and ``direction`` depend on positions, cells and strain
    only (no weights), so a backward pass that reads no geometry gradient may skip theirs
    (:mod:`matforge.models.gradient_scope`); ``weight`` must be weights (parameters or views of them)."""
    case = form_case(radial, source, direction)
    inputs = {"radial": radial, "weight": weight, "source": source}
    if direction is not None:
        inputs["direction"] = direction
    return slot_gradients(("target",), case, inputs, out_index, read_index, rows, source.shape[0], geometric)["target"]


def pair_message_reference(radial: Tensor, weight: Tensor, source: Tensor, out_index: Tensor,
                           read_index: Tensor, rows: int, direction: Tensor | None = None) -> Tensor:
    """The plain expression, differentiated by autograd (for the tests)."""
    x = torch.matmul(radial, weight.t())
    b = source.index_select(0, read_index)
    if direction is not None:
        terms = direction.unsqueeze(-1) * (x * b).unsqueeze(1)
    elif x.dim() == b.dim():
        terms = x * b
    else:
        terms = (x.unsqueeze(1) if x.dim() == 2 else x) * (b.unsqueeze(1) if b.dim() == 2 else b)
    return terms.new_zeros((rows,) + terms.shape[1:]).index_add(0, out_index, terms)
