"""Named fine-tuning benchmark tasks: which data, which target, which units, which protocol.

A :class:`Task` is a small frozen dataclass. Its data is a list of :class:`Source` alternatives
(the first whose files exist under the data root is used), each naming files relative to the data
root, the reader format, the property that holds the target in the converted records, and where a
user elsewhere downloads the file (address + sha256). Protocols (:mod:`matforge.finetune.folds`):

* ``matbench_kfold``: Matbench v0.1, ``KFold(n_splits=5, shuffle=True, random_state=18012019)``
  over the dataset order; validation carved from each training fold with a fixed seed.
* ``random_split``: fold k is a seeded random test split (``test_fraction`` of the records, seed
  ``split_seed + k``); validation carved from the rest. For datasets without a published protocol.
* ``given_split``: the source's own test file is the test set (mlearn); one fold.

Training sizes (``train_sizes``; ``None`` = the whole training part) subsample the training part of
each fold, nested: a smaller size is a subset of every larger one.

Data root: ``--data-root``, else the environment variable ``MATFORGE_DATA_ROOT``, else
``../shared/data`` relative to the current directory, else relative to the repository.

A user's own Matbench file is a task too: ``matbench:PATH`` or any path ending in ``.json.gz``;
its target is the file's non-structure column, and its units come from :data:`MATBENCH_TASKS` when
the file name is a Matbench task's.

Checksums: the Matbench sha256 values are those matminer lists for its download of each file
(``matminer/datasets/dataset_metadata.json``, key ``hash``, which matminer checks with SHA-256);
they could not be checked here (no network, and no original Matbench file on this machine). The
other sha256 values are of the copies in ``../shared/data`` (unchanged copies of the upstream
files, computed here); a later upstream revision may differ.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

PROTOCOLS = ("matbench_kfold", "random_split", "given_split")
KINDS = ("regression", "classification")
MATBENCH_SEED = 18012019
"""``random_state`` of Matbench v0.1's ``KFold`` (Dunn et al., npj Comput. Mater. 6, 138 (2020))."""
MATBENCH_FOLDS = 5
DATA_ROOT_ENV = "MATFORGE_DATA_ROOT"


@dataclass(frozen=True)
class Reference:
    """A published result for a task, in the task's units (a 5-fold mean for Matbench tasks)."""

    model: str
    value: float
    source: str
    metric: str = "mae"


@dataclass(frozen=True)
class Source:
    """One way to obtain a task's data: files under the data root, read with ``format``.

    ``target`` is the property name in the converted records (MatDeepLearn: ``y``; Matbench: the
    column name; CSV: the column); ``url``/``sha256`` document where a user elsewhere gets the
    first file and how to check it (``sha256`` of that file; ``None`` when unknown). ``test_files``
    (``given_split`` only) are converted with ``files`` and form the test set.
    """

    files: tuple[str, ...]
    format: str
    target: str
    url: str = ""
    sha256: str | None = None
    checksum_note: str = ""
    test_files: tuple[str, ...] = ()
    note: str = ""


@dataclass(frozen=True)
class Task:
    """A benchmark task. Units are the target's, as stored (no conversion)."""

    name: str
    sources: tuple[Source, ...]
    units: str
    description: str
    kind: str = "regression"
    pooling: str = "mean"
    protocol: str = "random_split"
    train_sizes: tuple[int | None, ...] = (None,)
    folds: int = MATBENCH_FOLDS
    test_fraction: float = 0.1
    split_seed: int = 0
    references: tuple[Reference, ...] = ()
    num_records: int | None = None
    aliases: tuple[str, ...] = ()

    @property
    def metric(self) -> str:
        """The headline metric: ``mae`` (lower is better) or ``roc_auc`` (higher is better)."""
        return "roc_auc" if self.kind == "classification" else "mae"

    def resolve(self, data_root: Path | None) -> tuple[Source, list[Path], list[Path]]:
        """The first source whose files exist: ``(source, files, test_files)`` as absolute paths.

        Raises ``FileNotFoundError`` naming every place looked at and where to download the data."""
        tried: list[str] = []
        for source in self.sources:
            files = [_locate(f, data_root) for f in source.files]
            tests = [_locate(f, data_root) for f in source.test_files]
            if all(p.exists() for p in files + tests):
                return source, files, tests
            tried += [str(p) for p in files + tests if not p.exists()]
        hints = "; ".join(f"{s.url} (sha256 {s.sha256 or 'unknown'})" for s in self.sources if s.url)
        raise FileNotFoundError(f"task {self.name!r}: no data found (looked for {', '.join(tried)}); "
                                f"set --data-root or {DATA_ROOT_ENV}. Download: {hints or 'see docs'}")


def _locate(name: str, data_root: Path | None) -> Path:
    path = Path(name).expanduser()
    if path.is_absolute() or data_root is None:
        return path.resolve()
    return (data_root / path).resolve()


def default_data_root(explicit: str | os.PathLike | None = None) -> Path | None:
    """``explicit``, else ``$MATFORGE_DATA_ROOT``, else ``./../shared/data``, else the repository's
    ``../shared/data``; ``None`` when none of those exists."""
    if explicit:
        return Path(explicit).expanduser().resolve()
    env = os.environ.get(DATA_ROOT_ENV)
    if env:
        return Path(env).expanduser().resolve()
    repo = Path(__file__).resolve().parent.parent
    for candidate in (Path.cwd() / ".." / "shared" / "data", repo / ".." / "shared" / "data"):
        if candidate.is_dir():
            return candidate.resolve()
    return None


# -- Matbench v0.1 structure tasks -------------------------------------------------------------

MATBENCH_URL = "https://ml.materialsproject.org/projects/{name}.json.gz"
_MATMINER_NOTE = ("sha256 as listed by matminer (dataset_metadata.json, key 'hash'); "
                  "not verified here (no network)")


@dataclass(frozen=True)
class MatbenchInfo:
    """Metadata of a Matbench v0.1 structure task file."""

    target: str
    units: str
    num_records: int
    sha256: str
    kind: str = "regression"
    pooling: str = "mean"


MATBENCH_TASKS: dict[str, MatbenchInfo] = {
    "matbench_jdft2d": MatbenchInfo("exfoliation_en", "meV/atom", 636,
                                    "26057dc4524e193e32abffb296ce819b58b6e11d1278cae329a2f97817a4eddf"),
    "matbench_phonons": MatbenchInfo("last phdos peak", "cm^-1", 1265,
                                     "4db551f21ec5f577e6202725f10e34dfc509aa7df3a6bdaac497da7f6dbbb9b3"),
    "matbench_dielectric": MatbenchInfo("n", "(unitless)", 4764,
                                        "83befa09bc2ec2f4b6143afc413157827a90e5e2e42c1eb507ccfa01bf26a1d6"),
    "matbench_log_gvrh": MatbenchInfo("log10(G_VRH)", "log10(GPa)", 10987,
                                      "098af941f4c663270f1fe21abf20ffad6fb85ecbfcba5786ceac03983ac29da7"),
    "matbench_log_kvrh": MatbenchInfo("log10(K_VRH)", "log10(GPa)", 10987,
                                      "44b113ddb7e23aa18731a62c74afa7e5aa654199e0db5f951c8248a00955c9cd"),
    # e_form of matbench_perovskites is per 5-atom cell (eV), hence sum pooling.
    "matbench_perovskites": MatbenchInfo("e_form", "eV (per cell)", 18928,
                                         "4641e2417f8ec8b50096d2230864468dfa08278dc9d257c327f65d0305278483",
                                         pooling="sum"),
    "matbench_mp_gap": MatbenchInfo("gap pbe", "eV", 106113,
                                    "58b65746bd88329986ed66031a2ac1369c7c522f7bc9f9081528e07097c2c057"),
    "matbench_mp_e_form": MatbenchInfo("e_form", "eV/atom", 132752,
                                       "dedcb1d4ba2e3e50dbdd45ba5bc647a00e9c2bcf8f8bf556dc8e92caa39eb21f"),
    "matbench_mp_is_metal": MatbenchInfo("is_metal", "(class)", 106113,
                                         "9a028ed5750a4c76ca36e9f3c8d48fe0bf3fb21b76ec2289e58ae7048d527919",
                                         kind="classification"),
}

JDFT2D_REFERENCES = (
    Reference("CGCNN (Matbench v0.1)", 49.24, "Matbench v0.1 leaderboard, matbench_jdft2d"),
    Reference("MODNet 0.1.12 (Matbench leaderboard best)", 33.19, "Matbench v0.1 leaderboard, matbench_jdft2d"),
    Reference("JMP-L (pre-trained GemNet-OC)", 29.94, "Shoghi et al., JMP (reported on matbench_jdft2d)"),
)


def _matbench_source(name: str) -> Source:
    info = MATBENCH_TASKS[name]
    return Source((f"matbench/{name}.json.gz",), "matbench", info.target, url=MATBENCH_URL.format(name=name),
                  sha256=info.sha256, checksum_note=_MATMINER_NOTE)


def _matbench_task(name: str, description: str, references: tuple[Reference, ...] = (),
                   extra_sources: tuple[Source, ...] = (), aliases: tuple[str, ...] = ()) -> Task:
    info = MATBENCH_TASKS[name]
    return Task(name=name, sources=(_matbench_source(name), *extra_sources), units=info.units,
                description=description, kind=info.kind, pooling=info.pooling, protocol="matbench_kfold",
                references=references, num_records=info.num_records, aliases=aliases)


MDL_URL = "https://github.com/Fung-Lab/MatDeepLearn_dev"
CDVAE_URL = "https://github.com/txie-93/cdvae/tree/main/data/{folder}/val.csv"
MLEARN_URL = "https://github.com/materialsvirtuallab/mlearn/tree/master/data/{element}/training.json"
_LOCAL_NOTE = "sha256 of the unchanged copy in ../shared/data"
_MDL_NOTE = (_LOCAL_NOTE + "; MatDeepLearn_dev's repository holds the file (path inside it not checked offline)")

_LOCAL_SHA256 = {
    "matdeeplearn/jdft2d/data.json": "2387ac7aac830ab975a18a4b48439529d209dfc0f0ca6580e8d4a2bae2d8207d",
    "matdeeplearn/2d_workfunction/data.json": "d8d57384890fa51226cc2a9210b0ec586005c333ad39ae1de134db36b5cc4b91",
    "perov5/val.csv": "326f401219901270374b71e2faff63df3a29a99fd26f469993b9f476b693daf2",
    "carbon24/val.csv": "36c00689cd63073c954a58bc6ed6e2adb7aeed5a630c994970959a1babffd50e",
    "mlearn/Ge/training.json": "43dee02009a5167f94c7aafce19051222bcfc328c46181750cc2a2018187ca00",
    "mlearn/Li/training.json": "1cac01475c5a4fb85771ee1fd23366a6b8abfb9891e0c9e088b6e37228e147b3",
    "mlearn/Mo/training.json": "b13305fca0d0d2631ab080c8fcf13c743ee79a911712fb65a34ca88fadf09f9a",
    "mlearn/Si/training.json": "ae6d4b0a65b00e0fcf7ba0a6fad366716710d2f0d21d70199203089c6866b500",
}

_JDFT2D_MDL = Source(
    ("matdeeplearn/jdft2d/data.json",), "matdeeplearn", "y", url=MDL_URL,
    sha256=_LOCAL_SHA256["matdeeplearn/jdft2d/data.json"], checksum_note=_MDL_NOTE,
    note=("MatDeepLearn's copy of matbench_jdft2d (636 rows, y = exfoliation_en in meV/atom): the folds "
          "equal Matbench's only if the copy keeps Matbench's row order, which cannot be checked offline"))


def _perov5(target: str, units: str, description: str) -> Task:
    return Task(name=f"perov5_{target}", units=units, description=description, protocol="random_split",
                train_sizes=(100, 300, 1000), num_records=3787,
                sources=(Source(("perov5/val.csv",), "csv-cif", target, url=CDVAE_URL.format(folder="perov_5"),
                                sha256=_LOCAL_SHA256["perov5/val.csv"], checksum_note=_LOCAL_NOTE),))


def _mlearn(element: str) -> Task:
    folder = f"mlearn/{element}"
    return Task(name=f"mlearn_{element}", units="eV/atom", pooling="sum",
                description=f"mlearn {element}: DFT energies and forces of non-equilibrium configurations "
                            "(Zuo et al. 2020), trained on training.json, tested on test.json; MAE = energy "
                            "per atom (eV/atom), forces_mae in results.csv (eV/Å)",
                protocol="given_split", folds=1,
                sources=(Source((f"{folder}/training.json",), "mlearn", "energy_forces",
                                url=MLEARN_URL.format(element=element),
                                sha256=_LOCAL_SHA256[f"{folder}/training.json"], checksum_note=_LOCAL_NOTE,
                                test_files=(f"{folder}/test.json",)),))


def _registry() -> dict[str, Task]:
    tasks = [
        _matbench_task("matbench_jdft2d", "exfoliation energy of layered materials (JARVIS-DFT, OptB88vdW)",
                       references=JDFT2D_REFERENCES, extra_sources=(_JDFT2D_MDL,), aliases=("jdft2d",)),
        *(_matbench_task(name, f"Matbench v0.1 {name} (needs the downloaded file)")
          for name in MATBENCH_TASKS if name != "matbench_jdft2d"),
        Task(name="2d_workfunction", units="eV", protocol="random_split", train_sizes=(100, 300, 1000),
             description="work function of 2D materials (2DMatPedia), MatDeepLearn's copy", num_records=3814,
             sources=(Source(("matdeeplearn/2d_workfunction/data.json",), "matdeeplearn", "y", url=MDL_URL,
                             sha256=_LOCAL_SHA256["matdeeplearn/2d_workfunction/data.json"],
                             checksum_note=_MDL_NOTE),),
             aliases=("workfunction_2d",)),
        _perov5("heat_ref", "eV/atom", "perovskite heat of formation (Castelli et al. 2012), CDVAE perov_5 val"),
        _perov5("heat_all", "eV/atom", "perovskite heat of formation, all references (Castelli et al. 2012)"),
        _perov5("dir_gap", "eV", "perovskite direct band gap, GLLB-SC (mostly 0)"),
        _perov5("ind_gap", "eV", "perovskite indirect band gap, GLLB-SC (mostly 0)"),
        Task(name="carbon24_energy", units="eV/atom", protocol="random_split", train_sizes=(100, 300, 1000),
             description="energy per atom of carbon polymorphs (AIRSS, 10 GPa), CDVAE carbon_24 val",
             num_records=2030,
             sources=(Source(("carbon24/val.csv",), "csv-cif", "energy_per_atom",
                             url=CDVAE_URL.format(folder="carbon_24"), sha256=_LOCAL_SHA256["carbon24/val.csv"],
                             checksum_note=_LOCAL_NOTE),)),
        *(_mlearn(element) for element in ("Ge", "Li", "Mo", "Si")),
    ]
    return {t.name: t for t in tasks}


TASKS: dict[str, Task] = _registry()


def matbench_file_task(path: str | os.PathLike) -> Task:
    """A task for a user's Matbench ``*.json.gz`` file (Matbench protocol).

    Known Matbench file names take their target, units and checksum from :data:`MATBENCH_TASKS`;
    otherwise the target is the file's only non-structure column and the units are unknown."""
    from matforge.datasets.readers.matbench import MatbenchReader

    file = Path(path).expanduser().resolve()
    if not file.exists():
        raise FileNotFoundError(f"Matbench file {file} does not exist")
    name = file.name
    for suffix in (".gz", ".json"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    info = MATBENCH_TASKS.get(name)
    if info is not None:
        target, units, kind, pooling, sha = info.target, info.units, info.kind, info.pooling, info.sha256
    else:
        columns, _ = MatbenchReader(file).header()
        others = [c for c in columns if c != "structure"]
        if len(others) != 1:
            raise ValueError(f"{file}: cannot tell the target among columns {others}")
        target, units, kind, pooling, sha = others[0], "", "regression", "mean", None
    base = TASKS.get(name)
    references = base.references if base is not None else ()
    source = Source((str(file),), "matbench", target, url=MATBENCH_URL.format(name=name) if info else "",
                    sha256=sha, checksum_note=_MATMINER_NOTE if info else "")
    return Task(name=name, sources=(source,), units=units, kind=kind, pooling=pooling, protocol="matbench_kfold",
                description=f"user's Matbench file {file}", references=references, num_records=None)


def get_task(name: str) -> Task:
    """Look a task up by name or alias, or make one for ``matbench:PATH`` / ``PATH.json.gz``."""
    if name.startswith("matbench:"):
        return matbench_file_task(name[len("matbench:"):])
    if name.lower().endswith(".json.gz"):
        return matbench_file_task(name)
    if name in TASKS:
        return TASKS[name]
    for task in TASKS.values():
        if name in task.aliases:
            return task
    raise KeyError(f"unknown task {name!r}; known: {', '.join(TASKS)} (or matbench:PATH)")


def with_overrides(task: Task, *, test_fraction: float | None = None) -> Task:
    """A copy of ``task`` with a different random-split test fraction."""
    return replace(task, test_fraction=task.test_fraction if test_fraction is None else test_fraction)


__all__ = ["Task", "Source", "Reference", "TASKS", "MATBENCH_TASKS", "get_task", "default_data_root",
           "matbench_file_task", "PROTOCOLS", "MATBENCH_SEED", "MATBENCH_FOLDS"]
