"""``matforge bench science``: the plan, the stage loop (skip, select, stop in time), the refusal of
changed settings, the table maths and the generated conclusions; and one end-to-end run of the
``mini`` preset (Ray Train pre-training with 2 workers, export, fine-tuning, report)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from matforge.experiments.conclusions import EXP1_CLAIMS, Claim, judge
from matforge.experiments.plan import PlanError, load_plan, plan_to_dict
from matforge.experiments.results import model_name, read_science_csv, write_science_csv
from matforge.experiments.stages import Stage, run_stages
from matforge.experiments.state import record_settings, setting_changes
from matforge.experiments.tables import fmt_stat, percent_change, summarize

REPO = Path(__file__).resolve().parent.parent


# -- the plan ---------------------------------------------------------------------------------------

def test_presets_load_and_overrides_apply():
    full = load_plan("full", corpus="/tmp/some-corpus")
    assert full.exp1.objectives == ["energy", "energy_forces", "efs", "denoise_derivative", "denoise_head"]
    assert full.exp1.seeds == [0, 1, 2] and full.pretrain.num_workers == 2
    assert [t.sizes for t in full.exp1.tasks] == [[], [100, 300, 1000], [100, 300, 1000]]
    assert full.exp1.backbone.name in ("painn", "cgcnn_smooth")
    mini = load_plan("mini", ["exp1.seeds=[3]", "pretrain.steps=7"])
    assert mini.exp1.seeds == [3] and mini.pretrain.steps == 7 and mini.corpus.synth_structures > 0


@pytest.mark.parametrize("overrides, message", [
    (["exp1.objectives=[energy, magic]"], "magic"),
    (["pretrain.steps=0"], "pretrain.steps"),
    (["exp1.nonsense=1"], "nonsense"),
    (["exp2.singles=[band_gap]"], "band_gap"),
])
def test_plan_refuses_bad_values(overrides, message):
    with pytest.raises(PlanError, match=message):
        load_plan("mini", overrides)


def test_full_needs_a_corpus_and_exp2_refuses_perov5_tasks():
    with pytest.raises(PlanError, match="--corpus"):
        load_plan("full")
    with pytest.raises(PlanError, match="perov5"):
        load_plan("mini", ["exp2.tasks=[{name: perov5_heat_all, folds: 1, sizes: [100]}]"])


# -- stages: skip, select, stop in time ---------------------------------------------------------------

def _stages(done: set[str], ran: list[str]) -> list[Stage]:
    def make(name: str, group: str) -> Stage:
        return Stage(name, group, lambda: name in done, lambda: (ran.append(name), done.add(name)))
    return [make("pretrain a", "pretrain"), make("export a", "pretrain"), make("finetune a", "finetune"),
            make("finetune b", "finetune")]


def test_stages_skip_what_is_done_and_resume():
    done, ran = {"pretrain a"}, []
    log = run_stages(_stages(done, ran), progress=lambda _: None)
    assert ran == ["export a", "finetune a", "finetune b"]
    assert log.skipped == ["pretrain a"] and not log.left
    ran.clear()
    log = run_stages(_stages(done, ran), progress=lambda _: None)
    assert ran == [] and len(log.skipped) == 4


def test_stages_only_one_group():
    done, ran = set(), []
    run_stages(_stages(done, ran), only="finetune", progress=lambda _: None)
    assert ran == ["finetune a", "finetune b"]


def test_stages_stop_after_the_current_stage_when_time_is_spent():
    done, ran = set(), []
    clock = iter([0.0, 0.0, 5.0, 5.0, 5.0, 11.0] + [11.0] * 5)  # deadline 10: the second stage ends at 11
    log = run_stages(_stages(done, ran), deadline=10.0, progress=lambda _: None, clock=lambda: next(clock))
    assert ran == ["pretrain a", "export a"]
    assert log.left == ["finetune a", "finetune b"] and log.stopped_early
    log = run_stages(_stages(done, ran), progress=lambda _: None)  # the next session finishes
    assert ran[2:] == ["finetune a", "finetune b"] and not log.left


# -- settings of an output directory ------------------------------------------------------------------

def test_changed_settings_are_refused_and_parallelism_is_not(tmp_path):
    plan = plan_to_dict(load_plan("mini"))
    record_settings(tmp_path, plan, "a" * 64)
    record_settings(tmp_path, plan_to_dict(load_plan("mini", ["finetune.jobs=2"])), "a" * 64)  # not a result
    with pytest.raises(PlanError, match=r"pretrain\.steps: 3 -> 5"):
        record_settings(tmp_path, plan_to_dict(load_plan("mini", ["pretrain.steps=5"])), "a" * 64)
    with pytest.raises(PlanError, match="corpus manifest sha256"):
        record_settings(tmp_path, plan, "b" * 64)
    assert setting_changes({"a": {"b": 1, "c": [1]}}, {"a": {"b": 1, "c": [1, 2]}}) == ["a.c: [1] -> [1, 2]"]


# -- the numbers ------------------------------------------------------------------------------------

def _row(model, seed, fold, mae, *, task="matbench_jdft2d", size="all", strategy="full", experiment="exp1",
         status="ok"):
    return {"experiment": experiment, "task": task, "model": model, "arch": "painn", "strategy": strategy,
            "fold": fold, "size": size, "seed": seed, "status": status, "mae": mae, "units": "meV/atom",
            "train_size": 400, "total_parameters": 1000, "trainable_parameters": 1000, "epochs_run": 10,
            "wall_s": 2.0, "fit_wall_s": 1.5, "key": f"{model}-{seed}-{fold}", "error": ""}


def _hand_made(efs_values=(40.0, 44.0, 42.0)):
    """scratch: seeds 0,1,2 with folds (50, 54) -> per-seed 52, 50, 54 -> mean 52, std 2.
    efs: one fold per seed, ``efs_values``; denoise_head / denoise_derivative: one seed, no spread."""
    rows = [_row("scratch", 0, 0, 50.0), _row("scratch", 0, 1, 54.0),
            _row("scratch", 1, 0, 48.0), _row("scratch", 1, 1, 52.0),
            _row("scratch", 2, 0, 52.0), _row("scratch", 2, 1, 56.0),
            _row("scratch", 2, 2, None, status="failed")]
    rows += [_row("efs", s, 0, v) for s, v in enumerate(efs_values)]
    rows += [_row("denoise_derivative", 0, 0, 47.0), _row("denoise_head", 0, 0, 49.0)]
    return rows


def test_mean_std_over_seeds_and_percent_against_scratch(tmp_path):
    path = tmp_path / "results.csv"
    write_science_csv(path, _hand_made())
    stats = summarize(read_science_csv(path))
    scratch = stats[("exp1", "matbench_jdft2d", "all", "scratch", "full")]
    assert scratch.per_seed == {0: 52.0, 1: 50.0, 2: 54.0}
    assert scratch.mean == pytest.approx(52.0) and scratch.std == pytest.approx(2.0)
    assert scratch.failed == 1 and scratch.folds == 6
    efs = stats[("exp1", "matbench_jdft2d", "all", "efs", "full")]
    assert efs.mean == pytest.approx(42.0) and efs.std == pytest.approx(2.0)
    assert percent_change(efs.mean, scratch.mean) == pytest.approx(-100 * 10 / 52)
    assert fmt_stat(efs, scratch.mean) == "42.00 ± 2.0 (−19.2 %)"
    head = stats[("exp1", "matbench_jdft2d", "all", "denoise_head", "full")]
    assert head.std is None and fmt_stat(head) == "49.00 ± —"
    assert efs.seconds_per_epoch == pytest.approx(4.5 / 30)


def test_model_names_from_harness_labels():
    assert model_name("none", "exp1") == "scratch"
    assert model_name("backbones/exp1-efs", "exp1") == "efs"
    assert model_name("none:backbones/exp2-attention", "exp2") == "scratch-attention"


# -- the generated conclusions ---------------------------------------------------------------------

def test_claim_sentences_flip_with_the_numbers():
    claim = EXP1_CLAIMS[0]   # efs beats scratch
    good = judge(claim, summarize(_hand_made((40.0, 44.0, 42.0))))
    assert good.verdict == "reproduces" and good.sentence().startswith("**Reproduces**")
    assert good.holds == ["matbench_jdft2d n=all"]
    bad = judge(claim, summarize(_hand_made((60.0, 64.0, 62.0))))
    assert bad.verdict == "does not reproduce" and bad.sentence().startswith("**Does not reproduce**")
    assert "reversed in 1 (matbench_jdft2d n=all)" in bad.sentence()
    noisy = judge(claim, summarize(_hand_made((50.0, 54.0, 49.0))))  # gap 1 < sqrt(2² + 2.6²)
    assert noisy.within_noise == ["matbench_jdft2d n=all"] and noisy.verdict == "does not reproduce"
    missing = judge(Claim("exp1", "x", "y", "efs", ("energy",)), summarize(_hand_made()))
    assert missing.verdict == "not measured"


def test_results_page_from_a_results_csv(tmp_path):
    from matforge.experiments.report import results_markdown

    rows = _hand_made()
    rows += [_row("scratch", 0, 0, 50.0, task="2d_workfunction", size="100"),
             _row("efs", 0, 0, 45.0, task="2d_workfunction", size="100"),
             _row("scratch", 0, 0, 40.0, task="2d_workfunction", size="300"),
             _row("efs", 0, 0, 42.0, task="2d_workfunction", size="300")]
    text = results_markdown(tmp_path, rows, {})
    assert "**Reproduces**: energy + forces + stress pre-training (derivatives) beats training" in text
    assert "holds in 2 of 3 settings; is reversed in 1 (2d_workfunction n=300)" in text
    assert "| efs | **42.00 ± 2.0 (−19.2 %)** |" in text
    assert "first: **efs**" in text and "Leakage check: not run" in text
    assert "Incomplete" not in text   # no plan.json: nothing planned to count


def test_results_page_says_when_grids_are_missing(tmp_path):
    from matforge.experiments.finetuning import COMPLETE
    from matforge.experiments.report import grids_progress, results_markdown

    from matforge.experiments.plan import plan_to_dict

    plan = load_plan("mini")
    record_settings(tmp_path, plan_to_dict(plan), None)
    planned = len(plan.exp1.tasks) * len(plan.exp1.seeds) + len(plan.exp2.tasks) * len(plan.exp2.seeds)
    grid = tmp_path / "finetune" / "exp1" / "task" / "seed0"
    grid.mkdir(parents=True)
    (grid / COMPLETE).write_text("{}")
    assert grids_progress(tmp_path, json.loads((tmp_path / "plan.json").read_text())["plan"]) == (1, planned)
    assert f"**Incomplete: 1 of {planned} fine-tuning grids (task × seed) have finished.**" in \
        results_markdown(tmp_path, _hand_made(), {})


# -- the miniature, end to end -----------------------------------------------------------------------

def _release_script():
    """finetune/backbones/make_efs_small.py (a repository script, not an installed module)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "finetune" / "backbones" / "make_efs_small.py"
    spec = importlib.util.spec_from_file_location("make_efs_small", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_mini_preset_end_to_end(tmp_path):
    out = tmp_path / "science"
    env = {**os.environ, "MATFORGE_KERNELS": "eager"}   # compiling adds CI time; the kernel tests cover it
    cmd = [sys.executable, "-m", "matforge", "bench", "science", "--preset", "mini", "--out", str(out)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for label in ("exp1-energy", "exp1-energy_forces", "exp1-efs", "exp1-denoise_derivative", "exp1-denoise_head",
                  "exp2-combined", "exp2-attention", "exp2-single-heat_ref"):
        assert (out / "backbones" / label / "card.json").is_file(), label
    commands = json.loads((out / "commands.json").read_text())
    for label in ("exp1-denoise_derivative", "exp1-denoise_head"):   # every frame noised, and validated
        assert "denoise.equilibrium_only=false" in commands[label]
        metrics = json.loads((out / "pretrain" / f"{label}.json").read_text())["metrics"]
        assert math.isfinite(metrics["val/denoise_mae"]) and metrics["val/denoise_mae"] > 0
    assert "equilibrium_only" not in commands["exp1-efs"]
    rows = read_science_csv(out / "results.csv")
    assert rows and all(r["status"] == "ok" for r in rows), [r["error"] for r in rows if r["status"] != "ok"]
    exp1 = {r["model"] for r in rows if r["experiment"] == "exp1"}
    assert exp1 == {"scratch", "energy", "energy_forces", "efs", "denoise_derivative", "denoise_head"}
    exp2 = {(r["model"], r["strategy"]) for r in rows if r["experiment"] == "exp2"}
    assert ("combined", "freeze:3") in exp2 and ("scratch-attention", "full") in exp2
    assert all(math.isfinite(r["mae"]) for r in rows)
    page = (out / "results.md").read_text()
    assert "Incomplete" not in page
    assert "## What reproduces and what does not" in page and "## Attention-CGCNN against CGCNN" in page
    released = _release_script().make(out, "exp1-efs", tmp_path / "released")   # the matforge-efs-small path
    card = json.loads((released / "card.json").read_text())["provenance"]
    assert card["name"] == "matforge-efs-small" and card["objective"] == "efs" and card["steps"] == 3
    assert [(d["task"], d["training_size"]) for d in card["downstream"]] == [("matbench_jdft2d", "40")]
    assert card["leakage"]["corpus_records_matching_downstream"] == 0 and "val/forces_mae" in card["validation"]
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tmp_path)   # everything is done
    assert again.returncode == 0 and "0 run," in again.stdout, again.stdout[-2000:]
    changed = subprocess.run(cmd + ["pretrain.steps=4"], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert changed.returncode == 2 and "pretrain.steps: 3 -> 4" in changed.stdout
