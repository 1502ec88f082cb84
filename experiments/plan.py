"""The plan of ``matforge bench science``: typed dataclasses, presets, YAML and dotted overrides.

A plan says everything that makes the results what they are: the corpus, the backbones and step
budget of the pre-trainings, the downstream tasks (folds, training sizes), the fine-tuning
hyper-parameters and the seeds. ``load_plan("full", ["exp1.seeds=[0]"], corpus="/data/chgnet")``
starts from a preset (:mod:`matforge.experiments.presets`), merges an optional YAML file onto it,
then dotted ``key=value`` overrides (values parsed as YAML), with OmegaConf's structured configs as
in :mod:`matforge.pretrain.config`: unknown keys and wrong types are errors.

Two experiments (``docs/results.md`` explains them to the reader):

* ``exp1`` (Jia et al.): one smooth backbone pre-trained on the corpus with each objective of
  ``exp1.objectives`` for the same number of steps, then fine-tuned (``full``) with the scratch
  baseline on ``exp1.tasks``. The denoising objectives noise every corpus frame (each frame its own
  reference, ``exp1.denoise_equilibrium_only: false``): the corpus is off-equilibrium frames with
  almost no relaxed one, and the comparison needs the same corpus for every objective.
* ``exp2`` (Deng, Park & Sy): CGCNN pre-trained with the multi-property (``combined``) objective on
  ``exp2.properties`` of perov5 structures plus the corpus' energies per atom, against one model per
  single property trained on the same number of structures, and the attention-CGCNN pre-trained like
  the combined model; each fine-tuned with ``exp2.strategies`` (the freeze grid) on ``exp2.tasks``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

EXP1_OBJECTIVES = ("energy", "energy_forces", "efs", "denoise_derivative", "denoise_head")
CORPUS_ENERGY = "corpus_energy_per_atom"
"""Property name under which exp2's datasets carry the corpus' energy per atom (eV/atom)."""
PROPERTY_SOURCES = ("heat_ref", "heat_all", "dir_gap", "ind_gap", CORPUS_ENERGY)
"""Properties exp2 can pre-train on: perov5's four columns and the corpus energy per atom."""
STAGE_GROUPS = ("pretrain", "finetune", "report")


class PlanError(ValueError):
    """A plan that cannot run; the message names the key."""


@dataclass
class CorpusPlan:
    """The pre-training corpus: ``path`` (a matforge shard directory), or with ``synth_structures > 0``
    and no path, EMT structures generated into ``OUT/data/corpus`` (the miniature's corpus).

    The corpus' own ``train``/``val`` splits are used when it has them; otherwise the whole corpus
    trains and validation is skipped."""

    path: str = ""
    synth_structures: int = 0
    synth_seed: int = 0
    synth_max_atoms: int = 16


@dataclass
class BackbonePlan:
    """An architecture (``matforge.models.create`` name) and its hyper-parameters."""

    name: str = "cgcnn_smooth"
    hyperparameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class PretrainBudget:
    """What every pre-training of an experiment shares: steps, batch, optimiser, Ray workers."""

    steps: int = 2000               # optimiser steps of every run (the same for every objective)
    max_atoms: int = 256            # atoms per batch on each worker
    lr: float = 1e-3
    warmup_steps: int = 100
    eval_every: int = 500           # steps between validations
    checkpoint_every: int = 500     # steps between checkpoints (a killed run resumes from the last)
    num_workers: int = 2            # Ray Train workers (gloo DDP on CPU)
    seed: int = 0


@dataclass
class TaskPlan:
    """A downstream task (``matforge.finetune.tasks`` name), the folds run (the first ``folds`` of its
    protocol) and the training sizes (``[]``: the task's whole training part)."""

    name: str = "matbench_jdft2d"
    folds: int = 1
    sizes: list[int] = field(default_factory=list)


@dataclass
class FinetunePlan:
    """Hyper-parameters of every fine-tuning cell (the harness's :class:`BenchSettings`)."""

    epochs: int = 60
    batch_size: int = 32
    lr: float = 1e-3
    patience: int = 15
    jobs: int = 2                   # cells in parallel processes (does not change results)


@dataclass
class Exp1Plan:
    """Seed 1: the same backbone, corpus and steps for each objective; ``full`` fine-tuning + scratch."""

    objectives: list[str] = field(default_factory=lambda: list(EXP1_OBJECTIVES))
    backbone: BackbonePlan = field(default_factory=BackbonePlan)
    tasks: list[TaskPlan] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    denoise_equilibrium_only: bool = False  # True: noise only relaxed frames (denoise.equilibrium_only)


@dataclass
class Exp2Plan:
    """Seed 0: combined vs single-property pre-training of CGCNN, the freeze grid, attention-CGCNN.

    ``structures`` structures per pre-training dataset: the combined one takes half from perov5
    (labelled with every perov5 property in ``properties``) and half from the corpus (labelled with
    ``corpus_energy_per_atom``); a single-property model trains on ``structures`` structures that all
    carry its one property. perov5 structures are pre-training data here, so perov5 tasks do not belong
    in ``exp2.tasks`` (refused)."""

    enabled: bool = True
    properties: list[str] = field(default_factory=lambda: ["heat_ref", "dir_gap", "ind_gap", CORPUS_ENERGY])
    singles: list[str] = field(default_factory=lambda: ["heat_ref", "dir_gap", CORPUS_ENERGY])
    structures: int = 2000
    backbone: BackbonePlan = field(default_factory=lambda: BackbonePlan("cgcnn", {"atom_fea_len": 32, "n_conv": 3}))
    attention: BackbonePlan = field(default_factory=lambda: BackbonePlan("cgcnn_attention",
                                                                         {"atom_fea_len": 32, "n_conv": 3}))
    strategies: list[str] = field(default_factory=lambda: ["freeze:1", "freeze:2", "freeze:3", "full"])
    tasks: list[TaskPlan] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0])
    perov5: str = "perov5/val.csv"  # relative to the data root


@dataclass
class SciencePlan:
    """The whole experiment. ``preset`` names where it started (for the report)."""

    preset: str = "full"
    corpus: CorpusPlan = field(default_factory=CorpusPlan)
    pretrain: PretrainBudget = field(default_factory=PretrainBudget)
    exp1: Exp1Plan = field(default_factory=Exp1Plan)
    exp2: Exp2Plan = field(default_factory=Exp2Plan)
    exp2_pretrain: PretrainBudget = field(default_factory=PretrainBudget)
    finetune: FinetunePlan = field(default_factory=FinetunePlan)
    data_root: str = ""             # downstream data ("" = the harness's default, ../shared/data)


NOT_RESULTS = ("finetune.jobs", "corpus.path", "data_root")
"""Plan keys that may change between runs of one output directory: parallelism, and where the same
data lies (the corpus is compared by its manifest's sha256 instead)."""


def validate(plan: SciencePlan) -> SciencePlan:
    """Check what the types cannot: known objectives and properties, ranges, no perov5 in exp2."""
    unknown = sorted(set(plan.exp1.objectives) - set(EXP1_OBJECTIVES))
    if unknown:
        raise PlanError(f"exp1.objectives: {unknown} not among {', '.join(EXP1_OBJECTIVES)}")
    if len(set(plan.exp1.objectives)) != len(plan.exp1.objectives):
        raise PlanError(f"exp1.objectives: listed twice in {plan.exp1.objectives}")
    for key, names in (("exp2.properties", plan.exp2.properties), ("exp2.singles", plan.exp2.singles)):
        bad = sorted(set(names) - set(PROPERTY_SOURCES))
        if bad:
            raise PlanError(f"{key}: {bad} not among {', '.join(PROPERTY_SOURCES)}")
    if plan.exp2.enabled and not plan.exp2.properties:
        raise PlanError("exp2.properties: the combined model needs at least one property")
    for key, budget in (("pretrain", plan.pretrain), ("exp2_pretrain", plan.exp2_pretrain)):
        for name in ("steps", "max_atoms", "eval_every", "checkpoint_every"):
            if getattr(budget, name) < 1:
                raise PlanError(f"{key}.{name}: must be >= 1, got {getattr(budget, name)}")
        if budget.num_workers < 0:
            raise PlanError(f"{key}.num_workers: must be >= 0, got {budget.num_workers}")
    for key, exp in (("exp1", plan.exp1), ("exp2", plan.exp2)):
        if not exp.seeds:
            raise PlanError(f"{key}.seeds: at least one seed")
        for task in exp.tasks:
            if task.folds < 1:
                raise PlanError(f"{key}.tasks: {task.name} folds must be >= 1")
    perov5 = [t.name for t in plan.exp2.tasks if t.name.startswith("perov5")]
    if plan.exp2.enabled and perov5:
        raise PlanError(f"exp2.tasks: {perov5} would fine-tune on the perov5 structures exp2 pre-trains on")
    if plan.exp2.enabled and plan.exp2.structures < 4:
        raise PlanError(f"exp2.structures: must be >= 4, got {plan.exp2.structures}")
    if not plan.corpus.path and plan.corpus.synth_structures <= 0:
        raise PlanError("corpus: give --corpus DIR (a matforge shard directory), or corpus.synth_structures > 0")
    if plan.finetune.jobs < 1:
        raise PlanError(f"finetune.jobs: must be >= 1, got {plan.finetune.jobs}")
    return plan


def load_plan(preset: str = "full", overrides: list[str] | None = None, *, plan_file: str | None = None,
              corpus: str | None = None) -> SciencePlan:
    """The preset ``preset``, then ``plan_file`` (YAML) merged on, then ``overrides`` (dotted
    ``key=value``), then ``corpus`` (``corpus.path``); validated."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from matforge.experiments.presets import preset_plan

    base = preset_plan(preset)
    origin = f"preset {preset}"
    try:
        layers = [OmegaConf.structured(base)]
        if plan_file:
            origin = plan_file
            if not Path(plan_file).is_file():
                raise PlanError(f"{plan_file}: no such plan file")
            layers.append(OmegaConf.create(Path(plan_file).read_text()))
        for item in overrides or []:
            if "=" not in item:
                raise PlanError(f"override {item!r} is not KEY=VALUE")
        if overrides:
            origin = "overrides"
            layers.append(OmegaConf.from_dotlist(list(overrides)))
        plan = OmegaConf.to_object(OmegaConf.merge(*layers))
    except OmegaConfBaseException as exc:
        first = (str(exc).strip().splitlines() or [str(exc)])[0]
        raise PlanError(f"{origin}: {first}") from None
    assert isinstance(plan, SciencePlan)
    if corpus:
        plan.corpus.path = str(Path(corpus).expanduser().resolve())
    return validate(plan)


def plan_to_dict(plan: SciencePlan) -> dict[str, Any]:
    """Plain nested dict of a plan (JSON- and YAML-able)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.structured(plan), resolve=True)  # type: ignore[return-value]


def plan_to_yaml(plan: SciencePlan) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.structured(plan))
