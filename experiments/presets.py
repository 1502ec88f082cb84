"""The two packaged plans of ``matforge bench science``: ``full`` (the experiment) and ``mini`` (CI).

Presets are Python (typed, no package data); a user's variant is a YAML file (``--plan``) or dotted
overrides on top of one of them, never a copy.
"""

from __future__ import annotations

from matforge.experiments.plan import (CORPUS_ENERGY, BackbonePlan, CorpusPlan, Exp1Plan, Exp2Plan, FinetunePlan,
                                       PlanError, PretrainBudget, SciencePlan, TaskPlan)

PRESETS = ("full", "mini")


def full() -> SciencePlan:
    """The real experiment, sized for 2 CPU cores in a few hours.

    Exp 1: ``painn`` (hidden 32, 3 interactions, cutoff 5 Å) pre-trained for 10,000 steps with each of
    the 5 objectives on the corpus by 2 Ray Train workers (256 atoms per worker and step, so 5.1 M atoms,
    about 18 passes over a 20,000-frame CHGNet corpus); fine-tuned (full, 60 epochs, patience 15) with
    the scratch baseline on matbench_jdft2d (5 folds, the whole training fold), 2d_workfunction and
    perov5_heat_all (one random split each, 100 / 300 / 1,000 training structures), seeds 0, 1, 2.
    Exp 2: CGCNN (atom_fea_len 32, 3 convolutions) and attention-CGCNN pre-trained for 1,500 steps on
    2,000 structures (combined: heat_ref, dir_gap, ind_gap of perov5 + corpus energy per atom; singles:
    heat_ref, dir_gap, corpus energy), each fine-tuned with the freeze grid on jdft2d (5 folds) and
    2d_workfunction (300 structures), seed 0.

    Sized so that the whole plan runs on 2 CPU cores in a few hours, in pieces with ``--max-minutes``;
    the report records the measured wall times of every stage.
    """
    tasks1 = [TaskPlan("matbench_jdft2d", folds=5, sizes=[]),
              TaskPlan("2d_workfunction", folds=1, sizes=[100, 300, 1000]),
              TaskPlan("perov5_heat_all", folds=1, sizes=[100, 300, 1000])]
    tasks2 = [TaskPlan("matbench_jdft2d", folds=5, sizes=[]), TaskPlan("2d_workfunction", folds=1, sizes=[300])]
    budget = PretrainBudget(steps=10_000, max_atoms=256, lr=1e-3, warmup_steps=300, eval_every=1000,
                            checkpoint_every=500, num_workers=2, seed=0)
    return SciencePlan(
        preset="full",
        corpus=CorpusPlan(path=""),
        pretrain=budget,
        exp1=Exp1Plan(backbone=BackbonePlan("painn", {"hidden": 32, "num_interactions": 3, "cutoff": 5.0}),
                      tasks=tasks1, seeds=[0, 1, 2]),
        exp2=Exp2Plan(structures=2000, tasks=tasks2, seeds=[0]),
        exp2_pretrain=PretrainBudget(steps=1500, max_atoms=512, lr=1e-3, warmup_steps=100, eval_every=500,
                                     checkpoint_every=250, num_workers=2, seed=0),
        finetune=FinetunePlan(epochs=60, batch_size=32, lr=1e-3, patience=15, jobs=2))


def mini() -> SciencePlan:
    """The CI miniature (a minute or two): 80 EMT structures, 3 steps per pre-training, one jdft2d fold
    with 40 training structures, 2 epochs, one seed; every pre-training in Ray Train's local mode
    (in-process: 9 runs with 2 workers each would spend minutes starting workers; the 2-worker path is
    what the ``full`` preset and the pretrain integration tests run). It checks that every stage runs
    and the report is written, not the science."""
    tiny = BackbonePlan("painn", {"hidden": 8, "num_interactions": 3, "cutoff": 4.0, "num_radial": 8})
    budget = PretrainBudget(steps=3, max_atoms=128, lr=1e-3, warmup_steps=1, eval_every=3, checkpoint_every=3,
                            num_workers=0, seed=0)
    task = [TaskPlan("matbench_jdft2d", folds=1, sizes=[40])]
    return SciencePlan(
        preset="mini",
        corpus=CorpusPlan(synth_structures=80, synth_seed=0, synth_max_atoms=8),
        pretrain=budget,
        exp1=Exp1Plan(backbone=tiny, tasks=task, seeds=[0]),
        exp2=Exp2Plan(properties=["heat_ref", "dir_gap", CORPUS_ENERGY], singles=["heat_ref"], structures=40,
                      backbone=BackbonePlan("cgcnn", {"atom_fea_len": 8, "n_conv": 3}),
                      attention=BackbonePlan("cgcnn_attention", {"atom_fea_len": 8, "n_conv": 3}),
                      tasks=task, seeds=[0]),
        exp2_pretrain=PretrainBudget(steps=3, max_atoms=128, lr=1e-3, warmup_steps=1, eval_every=3,
                                     checkpoint_every=3, num_workers=0, seed=0),
        finetune=FinetunePlan(epochs=2, batch_size=16, lr=1e-3, patience=2, jobs=1))


def preset_plan(name: str) -> SciencePlan:
    """A fresh plan of the preset ``name``."""
    makers = {"full": full, "mini": mini}
    if name not in makers:
        raise PlanError(f"no preset {name!r}; presets: {', '.join(PRESETS)}")
    return makers[name]()
