"""PaiNN's pair messages as slot gradients of one multilinear form (models/pair_forms.py), in blocks smaller
than the pair count: every kernel's values equal autograd on the plain expression, eager and compiled;
first and second derivatives pass gradcheck/gradgradcheck; several slots in one pass, and the sum over
replaced slots of a backward pass, equal one slot at a time; a third derivative; the gradient kinds a
pass skips (models/gradient_scope.py) change no gradient that pass reads."""

from __future__ import annotations

import pytest
import torch

from matforge.models import gradient_scope, kernel_mode
from matforge.models import pair_form_kernels
from matforge.models import pair_forms as pf

WIDTH, RADIAL, ATOMS, PAIRS, ROWS = 3, 4, 5, 13, 6


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of 2 pairs (a (2, 3, 3) float64 temporary), so every evaluation runs several blocks."""
    monkeypatch.setitem(pf.BLOCK_BYTES, "cpu", 2 * 3 * WIDTH * 8)
    assert pf.block_rows(WIDTH, torch.float64, torch.device("cpu")) == 2


def _form(case: str, seed: int = 0, pairs: int = PAIRS):
    """Random slots of ``case`` (float64, requiring grad) and the pair indices."""
    gen = torch.Generator().manual_seed(seed)
    r_rank, has_d, b_rank, _ = pf.CASES[case]

    def t(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).requires_grad_(True)

    radial = t(pairs, 3, RADIAL) if r_rank == 3 else t(pairs, RADIAL)
    weight = t(WIDTH, RADIAL)
    source = t(ATOMS, 3, WIDTH) if b_rank == 3 else t(ATOMS, WIDTH)
    direction = t(pairs, 3) if has_d else None
    out_index = torch.randint(0, ROWS, (pairs,), generator=gen)
    read_index = torch.randint(0, ATOMS, (pairs,), generator=gen)
    return radial, weight, source, direction, out_index, read_index


def _all_slots(case: str, seed: int) -> tuple[dict[str, torch.Tensor], tuple, torch.Generator]:
    """Every slot of ``case`` filled (detached; G random), the random form it came from, and a generator."""
    form = _form(case, seed=seed)
    radial, weight, source, direction, _, _ = form
    gen = torch.Generator().manual_seed(seed + 100)
    target = torch.randn((ROWS, WIDTH) if case == "scalar" else (ROWS, 3, WIDTH), generator=gen, dtype=torch.float64)
    slots = {"radial": radial.detach(), "weight": weight.detach(), "source": source.detach(), "target": target}
    if direction is not None:
        slots["direction"] = direction.detach()
    return slots, form, gen


@pytest.mark.parametrize("case", list(pf.CASES))
def test_message_value_matches_the_plain_expression(kernels, small_blocks, case):
    radial, weight, source, direction, o, k = _form(case, seed=len(case))
    want = pf.pair_message_reference(radial, weight, source, o, k, ROWS, direction)
    got = pf.pair_message(radial, weight, source, o, k, ROWS, direction)
    assert got.shape == want.shape == ((ROWS, WIDTH) if case == "scalar" else (ROWS, 3, WIDTH))
    assert torch.allclose(got, want, atol=1e-12)


@pytest.mark.parametrize("case", list(pf.CASES))
def test_message_first_and_second_derivatives_match_autograd(small_blocks, case):
    """Eager kernels; the compiled ones compute the same values (the tests of every kernel above and below)."""
    kernel_mode.set_kernel_mode("eager")
    radial, weight, source, direction, o, k = _form(case, seed=len(case))
    inputs = (radial, weight, source) + ((direction,) if direction is not None else ())

    def fn(radial, weight, source, direction=None):
        return pf.pair_message(radial, weight, source, o, k, ROWS, direction)

    assert torch.autograd.gradcheck(fn, inputs)
    assert torch.autograd.gradgradcheck(fn, inputs)


@pytest.mark.parametrize("case", list(pf.CASES))
def test_several_slots_in_one_pass_equal_one_at_a_time(kernels, small_blocks, case):
    full, (radial, weight, source, direction, o, k), _ = _all_slots(case, seed=3)
    target = full["target"]
    slots = [s for s in pf.SLOTS if s in full]
    together = pf.evaluate_many(slots, case, full, o, k, ROWS, ATOMS)
    for slot in slots:
        alone = pf.evaluate(slot, case, {n: v for n, v in full.items() if n != slot}, o, k, ROWS, ATOMS)
        assert together[slot].shape == alone.shape == full[slot].shape, slot
        assert torch.allclose(together[slot], alone, atol=1e-12), slot
    # and each equals autograd's gradient of the form L = <Y(R, W, d, b), G>
    form = (pf.pair_message_reference(radial, weight, source, o, k, ROWS, direction) * target).sum()
    leaves = [radial, weight, source] + ([direction] if direction is not None else [])
    names = ["radial", "weight", "source"] + (["direction"] if direction is not None else [])
    for name, grad in zip(names, torch.autograd.grad(form, leaves)):
        assert torch.allclose(together[name], grad, atol=1e-12), name


@pytest.mark.parametrize("case", list(pf.CASES))
def test_sum_over_replaced_slots_in_one_pass_equals_one_slot_at_a_time(kernels, small_blocks, case):
    """The backward of a node with several outputs: Σ_{s ≠ t} ∂L/∂t with H_s in slot s, for every t."""
    base, (_, _, _, _, o, k), gen = _all_slots(case, seed=11)
    replaced = {name: torch.randn(t.shape, generator=gen, dtype=torch.float64)
                for name, t in base.items() if name != "weight"}
    slots = list(base)
    got = pf.evaluate_substituted(slots, case, base, replaced, o, k, ROWS, ATOMS)
    for t in slots:
        want = torch.zeros_like(base[t])
        for s, h in replaced.items():
            if s != t:
                inputs = {n: (h if n == s else v) for n, v in base.items() if n != t}
                want += pf.evaluate(t, case, inputs, o, k, ROWS, ATOMS)
        assert torch.allclose(got[t], want, atol=1e-12), t
    # a single replaced slot (the backward of a node with one output) and a base without that slot
    single = pf.evaluate_substituted(["weight", "source"], case, {n: v for n, v in base.items() if n != "target"},
                                     {"target": replaced["target"]}, o, k, ROWS, ATOMS)
    inputs = {n: v for n, v in base.items() if n != "target"} | {"target": replaced["target"]}
    for t in ("weight", "source"):
        alone = pf.evaluate(t, case, {n: v for n, v in inputs.items() if n != t}, o, k, ROWS, ATOMS)
        assert torch.allclose(single[t], alone, atol=1e-12), t


def test_compiled_kernels_compile_each_variant_of_their_arguments_apart():
    """A kernel called with more argument variants than torch.compile's per-function recompile limit (8)."""
    import torch._dynamo

    torch._dynamo.reset()
    kernel_mode.set_kernel_mode("compiled")
    try:
        kernel = pair_form_kernels.sum_kernels["sum_scalar"]
        radial, weight, source, _, o, k = _form("scalar", seed=13)
        r, w, b = radial.detach(), weight.detach(), source.detach()
        g = torch.randn(ROWS, WIDTH, dtype=torch.float64)
        calls = 0
        for replaced in range(1, 6):   # which of H_R, H_b, H_G are given
            hr, hb, hg = (t if replaced >> bit & 1 else None for bit, t in enumerate((r, b, g)))
            for want in ((True, True, False, False, False), (False, True, True, hr is not None, False)):
                eager = pair_form_kernels.SUM_KERNELS["sum_scalar"](r, w, None, b, g, hr, None, hb, hg, o, k, want)
                compiled = kernel(r, w, None, b, g, hr, None, hb, hg, o, k, want)
                calls += 1
                for x, y in zip(eager, compiled):
                    assert (x is None) == (y is None) and (x is None or torch.allclose(x, y, atol=1e-12))
        assert calls == 10 and len(kernel.variants) == 10
    finally:
        kernel_mode.set_kernel_mode("eager")


def test_third_derivative_matches_autograd(small_blocks):
    """Slot gradients differentiate into slot gradients, so a third derivative is as exact as the first."""
    kernel_mode.set_kernel_mode("eager")
    radial, weight, source, direction, o, k = _form("edge_direction", seed=5)
    results = []
    for message in (pf.pair_message, pf.pair_message_reference):
        y = message(radial, weight, source, o, k, ROWS, direction)
        gd, gs = torch.autograd.grad((y ** 2).sum(), (direction, source), create_graph=True)
        (gw,) = torch.autograd.grad((gd ** 2).sum() + (gs ** 3).sum(), weight, create_graph=True)
        results.append(torch.autograd.grad(gw.pow(3).sum(), (radial, source)))
    for got, want in zip(*results):
        assert torch.allclose(got, want, atol=1e-9)


def test_skipped_gradient_kinds_leave_the_read_gradients_unchanged(small_blocks):
    """Inside ``skipping``, the gradients of the other kinds are the same; the skipped ones are not made."""
    kernel_mode.set_kernel_mode("eager")
    radial, weight, source, direction, o, k = _form("edge_direction", seed=7)

    def first_derivatives(geometric: bool):
        y = pf.pair_message(radial, weight, source, o, k, ROWS, direction, geometric=geometric)
        return torch.autograd.grad((y ** 2).sum(), (radial, weight, source, direction), allow_unused=True)

    full = first_derivatives(True)
    with gradient_scope.skipping("weights"):
        no_weights = first_derivatives(True)
    with gradient_scope.skipping("geometry"):
        no_geometry = first_derivatives(True)
        undeclared = first_derivatives(False)   # not declared geometric: nothing may be skipped
    assert no_weights[1] is None and all(torch.equal(a, b) for a, b in zip(no_weights[::2], full[::2]))
    assert no_weights[3] is not None and torch.equal(no_weights[3], full[3])
    assert no_geometry[0] is None and no_geometry[3] is None
    assert torch.equal(no_geometry[1], full[1]) and torch.equal(no_geometry[2], full[2])
    assert all(torch.equal(a, b) for a, b in zip(undeclared, full))


def test_gradient_scope_nests_restores_and_names_unknown_kinds():
    assert gradient_scope.wanted("weights") and gradient_scope.wanted("geometry")
    with pytest.raises(RuntimeError):
        with gradient_scope.skipping("weights"):
            with gradient_scope.skipping("geometry"):
                assert not gradient_scope.wanted("weights") and not gradient_scope.wanted("geometry")
            assert not gradient_scope.wanted("weights") and gradient_scope.wanted("geometry")
            raise RuntimeError("leaves the block")
    assert gradient_scope.wanted("weights") and gradient_scope.wanted("geometry")
    with pytest.raises(ValueError, match="unknown gradient kind"):
        with gradient_scope.skipping("positions"):
            pass


def test_no_pairs():
    kernel_mode.set_kernel_mode("eager")
    radial, weight, source, direction, o, k = _form("edge_direction", pairs=0)
    y = pf.pair_message(radial, weight, source, o, k, ROWS, direction)
    assert y.shape == (ROWS, 3, WIDTH) and torch.count_nonzero(y) == 0
    y.sum().backward()
    assert torch.count_nonzero(source.grad) == 0 and torch.count_nonzero(weight.grad) == 0


def test_impossible_combination_is_refused():
    radial, weight, source, direction, o, k = _form("rows")
    with pytest.raises(ValueError, match="no pair form"):
        pf.pair_message(radial, weight, source, o, k, ROWS, direction=torch.zeros(PAIRS, 3, dtype=torch.float64))


def test_block_size_does_not_change_painn_training_gradients(monkeypatch):
    """A PaiNN force-and-stress training step: the same weight gradients in one block and in blocks of 3."""
    from efs_physics import MLEARN, PEROV5, graph_batch, make_model, rattle
    from matforge.training.weight_gradients import backward_to_weights, trainable_weights

    kernel_mode.set_kernel_mode("eager")
    model = make_model("painn")
    records = [rattle(MLEARN[2], 0.05, seed=4), rattle(PEROV5[0], 0.05, seed=5)]
    grads = []
    for budget in (2**30, 3 * 3 * model.backbone.embedding_dim * 8):
        monkeypatch.setitem(pf.BLOCK_BYTES, "cpu", budget)
        model.zero_grad(set_to_none=True)
        out = model(graph_batch(records, model), forces=True, stress=True, create_graph=True)
        loss = out["energy"].pow(2).sum() + 10 * out["forces"].pow(2).sum() + 100 * out["stress"].pow(2).sum()
        backward_to_weights(loss, trainable_weights(model))
        grads.append([p.grad.clone() for p in trainable_weights(model)])
    assert pf.block_rows(model.backbone.embedding_dim, torch.float64, torch.device("cpu")) == 3
    for one_block, blocks in zip(*grads):
        assert torch.allclose(blocks, one_block, rtol=1e-10, atol=1e-12)
