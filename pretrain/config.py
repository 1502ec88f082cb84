"""The pre-training configuration: typed dataclasses, loaded from YAML with dotted overrides.

``load_config("quickstart", ["train.max_steps=50", "scaling.num_workers=2"])`` reads a packaged
config by name (``matforge/pretrain/configs/<name>.yaml``) or a YAML file by path, merges it onto
the dataclass schema (OmegaConf structured configs: unknown keys and wrong types are errors), then
applies ``key=value`` overrides (values parsed as YAML: ``1e-3``, ``true``, ``[a, b]``).

One schema for every experiment; an experiment is a few lines of YAML or a few overrides, never a
copy of a whole config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

OBJECTIVES = ("energy", "energy_forces", "efs", "denoise_derivative", "denoise_head", "combined")
DERIVATIVE_OBJECTIVES = ("energy_forces", "efs", "denoise_derivative")  # train on -dE/dr


@dataclass
class SynthDataConfig:
    """Generate EMT-labelled data (``matforge data synth``) when ``structures > 0`` and the
    train directory does not exist yet; a ``val_fraction`` of it becomes the val split."""

    structures: int = 0
    seed: int = 0
    elements: list[str] = field(default_factory=lambda: ["Cu", "Ag", "Au", "Ni", "Pd", "Pt", "Al"])
    max_atoms: int = 32
    val_fraction: float = 0.1


@dataclass
class DataConfig:
    """Shard directories. ``train``/``val`` are directories written by ``matforge data convert``;
    ``train_split``/``val_split`` name splits written by ``matforge data split`` (optional)."""

    train: str = ""
    val: str | None = None
    train_split: str | None = None
    val_split: str | None = None
    max_atoms: int = 1024          # atoms per batch on each worker
    loader_workers: int = -1       # DataLoader processes per training worker (0: in-process; -1: auto,
                                   # matforge.datasets.prefetch.resolve_loader_workers)
    # loader_workers=0: when a thread of the worker builds the next batch (matforge.datasets.prefetch):
    # auto | step (as the step starts) | backward (while the backward runs) | none
    prefetch_thread: str = "auto"
    graph_cache_mb: float = 512.0  # built graphs kept per process (not with denoising); 0: none
    balance_ranks: bool = True     # equal estimated work (atoms, edges, atom pairs) per rank in each step
    # weights per atom, edge and pair of that estimate (matforge.datasets.step_balance; ratios matter);
    # None: atoms + edges (1, 1, 0), or measured at the start with calibrate_balance; kept in the checkpoints
    balance_weights: list[float] | None = None
    # opt-in: measure the weights on every rank before the first step (matforge.pretrain.cost_calibration,
    # about a second of timed steps)
    calibrate_balance: bool = False
    properties: list[str] = field(default_factory=list)   # named properties for "combined"
    synth: SynthDataConfig = field(default_factory=SynthDataConfig)


@dataclass
class ModelConfig:
    name: str = "painn"            # cgcnn | cgcnn_smooth | cgcnn_attention | painn
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    # forces/stress objectives need an energy smooth in the positions (cgcnn_smooth, painn); true lets
    # them run on cgcnn / cgcnn_attention anyway (BatchNorm couples structures, the 12-nearest cut jumps)
    allow_non_smooth: bool = False


@dataclass
class LossConfig:
    """Loss kind and weights. Energy is compared per atom (eV/atom), forces per component (eV/Å),
    stress per component (eV/Å³), noise per component (units of σ), properties in normalised units."""

    kind: str = "mae"              # mae | mse | huber
    energy: float = 1.0
    forces: float = 10.0
    stress: float = 100.0
    noise: float = 1.0
    properties: dict[str, float] = field(default_factory=dict)   # per-property weights (default 1)


@dataclass
class DenoiseConfig:
    std: float = 0.1               # σ of the Gaussian position noise, Å
    equilibrium_only: bool = True  # noise only relaxed structures


@dataclass
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    schedule: str = "cosine"       # cosine | plateau | constant (all after linear warm-up)
    warmup_steps: int = 50
    min_lr_ratio: float = 0.01     # cosine floor as a fraction of lr
    plateau_factor: float = 0.5
    plateau_patience: int = 3      # evaluations without improvement
    grad_clip: float = 10.0        # max grad norm (0: off)


@dataclass
class TrainConfig:
    max_steps: int = 1000
    eval_every: int = 100          # steps between validations
    checkpoint_every: int = 100    # steps between checkpoints
    keep_checkpoints: int = 3
    log_every: int = 10
    seed: int = 0
    dtype: str = "float32"


@dataclass
class ScalingConfig:
    num_workers: int = 2           # 0: Ray Train local mode (the loop runs in this process, no Ray)
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    threads_per_worker: int = 1    # torch intra-op threads in each worker
    # opt-in small-node tuning: on an embedded instance, Ray's bookkeeping actors and each worker's
    # task-loop thread at SCHED_IDLE (pretrain.helper_priority); off by default, since that thread answers
    # the controller's polls and health checks and starves when loader processes fill the cores
    idle_ray_helpers: bool = False
    # opt-in: time each rank's waits at the step's all-reduces (time/sync_wait_fraction) through a
    # replaced DDP communication hook (pretrain.sync_timing); CPU workers only
    measure_sync_wait: bool = False


@dataclass
class RunConfig:
    name: str = "pretrain"
    storage_path: str = "runs"     # made absolute at launch
    max_failures: int = 0          # worker failures tolerated (restart from the last checkpoint)


@dataclass
class PretrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: str = "efs"
    loss: LossConfig = field(default_factory=LossConfig)
    denoise: DenoiseConfig = field(default_factory=DenoiseConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    run: RunConfig = field(default_factory=RunConfig)


class ConfigError(ValueError):
    """A config that cannot be loaded; the message names the key or file."""


def packaged_configs() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("matforge.pretrain").joinpath("configs").iterdir()
                  if p.name.endswith(".yaml"))


def _config_text(name_or_path: str) -> tuple[str, str]:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"{path}: no such config file")
        return path.read_text(), str(path)
    res = resources.files("matforge.pretrain").joinpath("configs", f"{name_or_path}.yaml")
    if not res.is_file():
        raise ConfigError(f"no packaged config {name_or_path!r}; packaged: {', '.join(packaged_configs())}")
    return res.read_text(), f"packaged:{name_or_path}"


def validate(cfg: PretrainConfig) -> PretrainConfig:
    """Check values the schema's types cannot (enumerations, ranges, consistency)."""
    if cfg.objective not in OBJECTIVES:
        raise ConfigError(f"objective: {cfg.objective!r} is not one of {', '.join(OBJECTIVES)}")
    if cfg.loss.kind not in ("mae", "mse", "huber"):
        raise ConfigError(f"loss.kind: {cfg.loss.kind!r} is not one of mae, mse, huber")
    if cfg.optim.schedule not in ("cosine", "plateau", "constant"):
        raise ConfigError(f"optim.schedule: {cfg.optim.schedule!r} is not one of cosine, plateau, constant")
    if cfg.train.dtype not in ("float32", "float64"):
        raise ConfigError(f"train.dtype: {cfg.train.dtype!r} is not float32 or float64")
    from matforge.datasets.prefetch import PREFETCH_MODES

    if not cfg.data.graph_cache_mb >= 0:
        raise ConfigError(f"data.graph_cache_mb: must be >= 0, got {cfg.data.graph_cache_mb}")

    if cfg.data.balance_weights is not None:
        from matforge.datasets.step_balance import check_cost_weights

        try:
            check_cost_weights(cfg.data.balance_weights)
        except ValueError as err:
            raise ConfigError(f"data.balance_weights: {err} (or null: measure them)") from None
    if cfg.data.loader_workers < -1:
        raise ConfigError(f"data.loader_workers: must be >= 0, or -1 for auto, got {cfg.data.loader_workers}")
    if cfg.data.prefetch_thread not in PREFETCH_MODES:
        raise ConfigError(f"data.prefetch_thread: {cfg.data.prefetch_thread!r} is not one of {', '.join(PREFETCH_MODES)}")
    if cfg.objective == "combined" and not cfg.data.properties:
        raise ConfigError("objective 'combined' needs data.properties (the property names to learn)")
    if cfg.scaling.num_workers < 0:
        raise ConfigError(f"scaling.num_workers: must be >= 0 (0 = Ray Train local mode), got {cfg.scaling.num_workers}")
    for key, value in [("train.max_steps", cfg.train.max_steps),
                       ("data.max_atoms", cfg.data.max_atoms), ("train.eval_every", cfg.train.eval_every),
                       ("train.checkpoint_every", cfg.train.checkpoint_every), ("train.keep_checkpoints", cfg.train.keep_checkpoints)]:
        if value < 1:
            raise ConfigError(f"{key}: must be >= 1, got {value}")
    if not cfg.data.train:
        raise ConfigError("data.train: no training data given (a shard directory)")
    for key, value in [("run.storage_path", cfg.run.storage_path), ("data.train", cfg.data.train),
                       ("data.val", cfg.data.val)]:
        if value and "://" in value:
            raise ConfigError(f"{key}: {value!r} is a URI; matforge reads data and writes runs (checkpoints, "
                              "TensorBoard, export) on a filesystem path, which on a cluster must be shared storage "
                              "mounted at the same path on every node (NFS, Lustre, EFS, Filestore; or a bucket "
                              "mounted with a FUSE driver such as s3fs or gcsfuse)")
    _check_hyperparameters(cfg)
    if cfg.data.val is None and cfg.data.val_split:
        cfg.data.val = cfg.data.train  # a val split of the training directory
    return cfg


def _check_hyperparameters(cfg: PretrainConfig) -> None:
    import inspect

    from matforge.models.registry import ARCHITECTURES, backbone_class

    if cfg.model.name not in ARCHITECTURES:
        raise ConfigError(f"model.name: {cfg.model.name!r} is not one of {', '.join(ARCHITECTURES)}")
    params = inspect.signature(backbone_class(cfg.model.name).__init__).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        known = [n for n in params if n != "self"]
        unknown = sorted(set(cfg.model.hyperparameters) - set(known))
        if unknown:
            raise ConfigError(f"model.hyperparameters: {cfg.model.name} does not take {unknown}; it takes {known}")
    if cfg.objective in DERIVATIVE_OBJECTIVES and not cfg.model.allow_non_smooth:
        from matforge.models.registry import create

        try:
            smooth = create(cfg.model.name, **cfg.model.hyperparameters).smooth
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"model.hyperparameters: {cfg.model.name} cannot be built ({exc})") from None
        if not smooth:
            smooth_names = [n for n in ARCHITECTURES if create(n).smooth]
            raise ConfigError(f"objective {cfg.objective!r} trains forces as -dE/dr, which needs an energy that is smooth "
                              f"in the positions; {cfg.model.name} is not (BatchNorm couples the structures of a batch, "
                              f"a nearest-neighbour cut jumps). Use model.name={' or '.join(smooth_names)}, or set "
                              "model.allow_non_smooth=true if you mean it")


def load_config(name_or_path: str | None = None, overrides: list[str] | None = None) -> PretrainConfig:
    """Load a packaged config by name or a YAML file, apply dotted ``key=value`` overrides."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    schema = OmegaConf.structured(PretrainConfig)
    layers = [schema]
    origin = "defaults"
    try:
        for item in overrides or []:
            if "=" not in item:
                raise ConfigError(f"override {item!r} is not KEY=VALUE")
        dotlist = OmegaConf.from_dotlist(list(overrides)) if overrides else None
        if name_or_path:
            text, origin = _config_text(name_or_path)
            layer = OmegaConf.create(text)
            # switching architecture on the command line starts from that architecture's defaults:
            # the file's hyper-parameters belong to its own model
            new_name = OmegaConf.select(dotlist, "model.name") if dotlist is not None else None
            if new_name is not None and new_name != OmegaConf.select(layer, "model.name"):
                if OmegaConf.select(layer, "model.hyperparameters") is not None:
                    layer.model.hyperparameters = {}
            layers.append(layer)
        if dotlist is not None:
            layers.append(dotlist)
        merged = OmegaConf.merge(*layers)
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        msg = str(exc).strip().splitlines()
        raise ConfigError(f"{origin}: {msg[0] if msg else exc}" + (f" ({msg[1].strip()})" if len(msg) > 1 else "")) from None
    assert isinstance(cfg, PretrainConfig)
    return validate(cfg)


def to_dict(cfg: PretrainConfig) -> dict[str, Any]:
    """Plain nested dict (JSON/YAML-able) of a config."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]


def to_yaml(cfg: PretrainConfig) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def from_dict(data: dict[str, Any]) -> PretrainConfig:
    """Rebuild a config from :func:`to_dict` output (e.g. stored in a checkpoint)."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(PretrainConfig), OmegaConf.create(data)))
    assert isinstance(cfg, PretrainConfig)
    return cfg
