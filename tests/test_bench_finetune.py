"""``matforge bench finetune``: Matbench folds (equal to sklearn's KFold), nested training sizes,
grid expansion, resume, failed cells, results.csv, the summary table, the docs section, and one
end-to-end run with the real fine-tuning API on the Matbench fixture."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest

from matforge.finetune import folds as F
from matforge.finetune.bench_docs import begin_marker, docs_section, end_marker, update_docs_section
from matforge.finetune.harness import (RESULT_COLUMNS, BenchError, BenchSettings, Cell, CellSpec, TaskData,
                                       expand_grid, parse_backbones, run_bench, scratch_for)
from matforge.finetune.report import load_bench, summary_markdown, write_report
from matforge.finetune.tasks import MATBENCH_SEED, TASKS, Task, get_task

FIXTURES = Path(__file__).parent / "fixtures"
MATBENCH_FIXTURE = FIXTURES / "matbench" / "matbench_jdft2d.json.gz"


# -- folds ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [5, 7, 64, 636])
def test_kfold_equals_sklearn(n: int) -> None:
    from sklearn.model_selection import KFold

    ours = F.kfold(n, 5, MATBENCH_SEED)
    theirs = list(KFold(n_splits=5, shuffle=True, random_state=MATBENCH_SEED).split(np.arange(n)))
    assert len(ours) == len(theirs) == 5
    for (tr, te), (tr_ref, te_ref) in zip(ours, theirs):
        np.testing.assert_array_equal(tr, tr_ref)
        np.testing.assert_array_equal(te, te_ref)


def test_kfold_other_seed_and_split_count_equal_sklearn() -> None:
    from sklearn.model_selection import KFold

    for n_splits, seed in [(3, 0), (4, 123), (10, MATBENCH_SEED)]:
        ours = F.kfold(53, n_splits, seed)
        theirs = list(KFold(n_splits=n_splits, shuffle=True, random_state=seed).split(np.arange(53)))
        for (tr, te), (tr_ref, te_ref) in zip(ours, theirs):
            np.testing.assert_array_equal(te, te_ref)
            np.testing.assert_array_equal(tr, tr_ref)


def test_matbench_folds_partition_and_never_leak() -> None:
    task = TASKS["matbench_jdft2d"]
    splits = F.make_folds(task, 636, range(5))
    tests = np.concatenate([s.test for s in splits])
    assert sorted(tests.tolist()) == list(range(636))  # every record tested exactly once
    for s in splits:
        train, val, test = set(s.train_order.tolist()), set(s.val.tolist()), set(s.test.tolist())
        assert not (train & val) and not (train & test) and not (val & test)
        assert len(train) + len(val) + len(test) == 636
        assert len(val) == round(0.1 * (636 - len(test)))


def test_validation_carve_is_fixed() -> None:
    pool = np.arange(100, 200)
    a = F.carve_validation(pool, 0.1)
    b = F.carve_validation(pool[::-1], 0.1)  # order of the pool does not matter
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert len(a[1]) == 10 and set(a[1]) <= set(pool.tolist())


def test_train_sizes_are_nested() -> None:
    split = F.make_folds(TASKS["2d_workfunction"], 3814, [0])[0]
    small, medium, large = (set(split.train(n).tolist()) for n in (50, 100, 300))
    assert len(small) == 50 and len(medium) == 100 and len(large) == 300
    assert small < medium < large
    assert not large & set(split.test.tolist()) and not large & set(split.val.tolist())
    assert len(split.train(None)) == split.available() == len(split.train(10**9))


def test_random_split_keeps_groups_together() -> None:
    groups = np.repeat(np.arange(30), 4)  # 30 trajectories of 4 frames
    task = Task(name="t", sources=(), units="eV", description="", protocol="random_split", test_fraction=0.2)
    for split in F.make_folds(task, 120, [0, 1], groups=groups):
        sides = [set(groups[split.test]), set(groups[split.val]), set(groups[split.train_order])]
        assert not (sides[0] & sides[1]) and not (sides[0] & sides[2]) and not (sides[1] & sides[2])
    a, b = F.make_folds(task, 120, [0, 1], groups=groups)
    assert set(a.test.tolist()) != set(b.test.tolist())  # folds differ


def test_fold_numbers() -> None:
    task = TASKS["matbench_jdft2d"]
    assert F.fold_numbers(task, None) == [0, 1, 2, 3, 4]
    assert F.fold_numbers(task, 2) == [0, 1]
    assert F.fold_numbers(task, [4, 0]) == [0, 4]
    with pytest.raises(ValueError):
        F.fold_numbers(task, 6)


# -- tasks ---------------------------------------------------------------------------------------

def test_task_registry() -> None:
    jdft = get_task("jdft2d")
    assert jdft is TASKS["matbench_jdft2d"] and jdft.protocol == "matbench_kfold" and jdft.units == "meV/atom"
    assert {r.value for r in jdft.references} >= {49.24, 33.19}
    assert jdft.sources[0].url == "https://ml.materialsproject.org/projects/matbench_jdft2d.json.gz"
    assert len(jdft.sources[0].sha256) == 64
    assert TASKS["perov5_heat_ref"].sources[0].target == "heat_ref"
    assert TASKS["carbon24_energy"].sources[0].target == "energy_per_atom"
    assert TASKS["mlearn_Mo"].sources[0].target == "energy_forces" and TASKS["mlearn_Mo"].protocol == "given_split"
    user = get_task(f"matbench:{MATBENCH_FIXTURE}")
    assert (user.name, user.sources[0].target, user.units) == ("matbench_jdft2d", "exfoliation_en", "meV/atom")
    assert get_task(str(MATBENCH_FIXTURE)).sources[0].files == (str(MATBENCH_FIXTURE.resolve()),)
    with pytest.raises(KeyError):
        get_task("no_such_task")


def test_task_resolve_prefers_existing_source(tmp_path: Path) -> None:
    (tmp_path / "matdeeplearn" / "jdft2d").mkdir(parents=True)
    (tmp_path / "matdeeplearn" / "jdft2d" / "data.json").write_text("[]")
    source, files, _ = TASKS["matbench_jdft2d"].resolve(tmp_path)
    assert source.format == "matdeeplearn" and source.target == "y" and files[0].parent.name == "jdft2d"
    (tmp_path / "matbench").mkdir()
    (tmp_path / "matbench" / "matbench_jdft2d.json.gz").write_bytes(b"")
    source, _, _ = TASKS["matbench_jdft2d"].resolve(tmp_path)
    assert source.format == "matbench" and source.target == "exfoliation_en"
    with pytest.raises(FileNotFoundError, match="ml.materialsproject.org"):
        TASKS["matbench_phonons"].resolve(tmp_path)


# -- grid ----------------------------------------------------------------------------------------

def test_parse_backbones_and_scratch_pairing() -> None:
    specs = parse_backbones(["cgcnn-formation-energy", "cgcnn-band-gap", "none", "none:cgcnn-band-gap"])
    assert specs[2].scratch and specs[2].arch == "cgcnn-formation-energy"
    assert specs[3].arch == "cgcnn-band-gap"
    assert scratch_for(specs[0], specs) is specs[2] and scratch_for(specs[1], specs) is specs[3]
    assert parse_backbones(["none:painn"])[0].arch == "painn"
    with pytest.raises(BenchError):
        parse_backbones(["none"])


def test_expand_grid() -> None:
    backbones = parse_backbones(["A", "B", "none"])
    strategies = ["full", "freeze:1", "freeze:2", "freeze:3", "probe"]
    cells = expand_grid(["t1", "t2"], backbones, {"t1": [0, 1, 2], "t2": [0]}, {"t1": [50, None], "t2": [None]},
                        strategies, [0, 1])
    # per (task, size, fold): 2 pre-trained x 5 strategies + scratch x 1, times 2 seeds
    assert len(cells) == (3 * 2 + 1 * 1) * (2 * 5 + 1) * 2
    assert {c.strategy for c in cells if c.backbone == "none"} == {"full"}
    assert len({c.key for c in cells}) == len(cells)
    assert Cell("t1", "A", 0, None, "freeze:1", 0).key == "t1__A__fold0__nall__freeze1__seed0"
    path_key = Cell("t", "/x/y/model.pth.tar", 0, 5, "full", 1).key
    assert "/" not in path_key and path_key.startswith("t__model-") and path_key.endswith("__n5__full__seed1")


# -- the harness with a fake runner ----------------------------------------------------------------

N_FAKE = 40
BASE = {"A": 10.0, "B": 12.0, "none": 15.0}
OFFSET = {"full": 0.0, "freeze:1": 0.5, "freeze:2": 1.0, "freeze:3": 2.0, "probe": 3.0}


def fake_loader(task: Task, data_root, cache_dir) -> TaskData:
    ids = [f"r{i:03d}" for i in range(N_FAKE)]
    return TaskData(task, "/fake/data", ids, None, None, task.sources[0] if task.sources else None, ["/fake/file"],
                    "fake-dataset")


def fake_runner(spec: CellSpec) -> dict:
    """Deterministic metrics; writes predictions.csv like the real API (module level: crosses to workers)."""
    c = spec.cell
    if spec.backbone == "FAIL" or c.strategy == "freeze:9":
        raise RuntimeError("this cell is broken on purpose")
    mae = BASE.get(spec.backbone, 11.0) + OFFSET.get(c.strategy, 0.0) + 0.1 * c.fold + 0.01 * c.seed
    out = Path(spec.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "predictions.csv", "w") as f:
        f.write("id,target,prediction\n")
        for k, record_id in enumerate(spec.split["test"]):
            f.write(f"{record_id},{k},{k + mae}\n")
    train, val, test = (set(spec.split[side]) for side in ("train", "val", "test"))
    assert not (train & val) and not (train & test) and not (val & test)
    return {"test_mae": mae, "test_rmse": mae * 1.3, "test_r2": 0.5, "val_mae": mae, "train_size": len(train),
            "val_size": len(val), "test_size": len(test),
            "trainable_parameters": 1000 if c.strategy == "full" else 500, "total_parameters": 1000,
            "best_epoch": 3, "wall_s": 0.5, "units": spec.units}


class Counter:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, spec: CellSpec) -> dict:
        self.calls.append(spec.cell.key)
        return fake_runner(spec)


def run_fake(out: Path, runner=fake_runner, **kwargs) -> object:
    args = dict(backbones=["A", "none"], tasks=["matbench_jdft2d"], strategies=["full", "freeze:1", "freeze:2"],
                folds=2, seeds=1, train_sizes=None)
    args.update(kwargs)
    settings = args.pop("settings", BenchSettings())
    return run_bench(out=out, settings=settings, runner=runner, loader=fake_loader, progress=lambda s: None, **args)


def test_resume_runs_nothing_twice(tmp_path: Path) -> None:
    counter = Counter()
    first = run_fake(tmp_path, counter)
    assert len(counter.calls) == 2 * (3 + 1) and first.ran == 8 and first.reused == 0
    before = (tmp_path / "results.csv").read_text()
    again = Counter()
    second = run_fake(tmp_path, again)
    assert again.calls == [] and second.ran == 0 and second.reused == 8
    assert (tmp_path / "results.csv").read_text() == before
    # a larger grid runs only the new cells
    third = Counter()
    run_fake(tmp_path, third, folds=3)
    assert len(third.calls) == 4 and all("fold2" in k for k in third.calls)


def test_changed_settings_are_refused(tmp_path: Path) -> None:
    run_fake(tmp_path, settings=BenchSettings(epochs=2))
    with pytest.raises(BenchError, match="epochs"):
        run_fake(tmp_path, settings=BenchSettings(epochs=3))


def test_failing_cell_is_recorded_and_rerun(tmp_path: Path) -> None:
    result = run_fake(tmp_path, strategies=["full", "freeze:9"])
    rows = {(r["backbone"], r["strategy"], r["fold"]): r for r in result.rows}
    assert result.failed == 2 and len(rows) == 2 * 3
    bad = rows[("A", "freeze:9", 0)]
    assert bad["status"] == "failed" and "broken on purpose" in bad["error"] and bad["mae"] is None
    assert rows[("A", "full", 1)]["status"] == "ok"
    error = json.loads((tmp_path / "cells" / bad["key"] / "error.json").read_text())
    assert "RuntimeError" in error["error"] and "Traceback" in error["error"]
    again = Counter()
    run_fake(tmp_path, again, strategies=["full", "freeze:9"])
    assert sorted(again.calls) == sorted(r["key"] for r in result.rows if r["status"] == "failed")


def test_results_csv(tmp_path: Path) -> None:
    run_fake(tmp_path, train_sizes=[10, None], seeds=2)
    with open(tmp_path / "results.csv", newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert tuple(reader.fieldnames) == RESULT_COLUMNS
    assert len(rows) == 2 * 2 * 2 * (3 + 1)  # sizes x folds x seeds x (3 strategies + scratch)
    assert {r["size"] for r in rows} == {"10", "all"}
    small = [r for r in rows if r["size"] == "10"]
    assert {r["train_size"] for r in small} == {"10"}
    assert all(r["status"] == "ok" and float(r["mae"]) > 0 and r["units"] == "meV/atom" for r in rows)
    assert not list(tmp_path.glob("*.partial"))
    split = json.loads((tmp_path / "splits" / "matbench_jdft2d" / "fold0.json").read_text())
    assert len(split["test"]) == 8 and len(split["val"]) == 3 and len(split["train_order"]) == 29


def test_summary_has_the_seed_table(tmp_path: Path) -> None:
    run_fake(tmp_path, backbones=["A", "B", "none"], strategies=["full", "freeze:1", "freeze:2", "freeze:3"])
    written = write_report(tmp_path)
    text = (tmp_path / "summary.md").read_text()
    header = ("| backbone | embedding + first 1 block frozen | embedding + first 2 blocks frozen | "
              "embedding + first 3 blocks frozen | full fine-tuning |")
    assert header in text
    row_a = next(line for line in text.splitlines() if line.startswith("| A |"))
    # A full: mean of folds 0 and 1 = 10.05 vs scratch 15.05 -> -33.2 %
    assert "**10.05 ± 0.050 (−33.2 %)**" in row_a  # best of the table, in bold
    assert "10.55 ± 0.050 (−29.9 %)" in row_a
    scratch = next(line for line in text.splitlines() if line.startswith("| scratch (A, random weights) |"))
    assert scratch.count("—") == 3 and "15.05 ± 0.050" in scratch
    assert "CGCNN (Matbench v0.1) 49.24" in text and "33.19" in text
    assert "KFold(n_splits=5, shuffle=True, random_state=18012019)" in text
    total = next(line for line in text.splitlines() if line.startswith("| total per strategy |"))
    assert len(re.findall(r"\| [0-9.]+ s ", total)) == 4  # every strategy column has a wall time
    names = {p.name for p in written}
    assert {"summary.md", "learning_curve_matbench_jdft2d.png", "parity_matbench_jdft2d.png"} <= names
    assert (tmp_path / "plots" / "parity_matbench_jdft2d.png").stat().st_size > 1000


def test_summary_learning_curve_sizes(tmp_path: Path) -> None:
    run_fake(tmp_path, train_sizes=[5, 20], strategies=["full"])
    rows, bench = load_bench(tmp_path)
    text = summary_markdown(rows, bench)
    assert "### training size 5 (5 structures on average)" in text
    assert "### training size 20 (20 structures on average)" in text


def test_parallel_jobs(tmp_path: Path) -> None:
    result = run_fake(tmp_path, settings=BenchSettings(jobs=2), strategies=["full", "freeze:9"])
    assert len(result.rows) == 6 and result.failed == 2
    assert all(r["status"] == "ok" for r in result.rows if r["strategy"] == "full")


# -- docs ----------------------------------------------------------------------------------------

def test_docs_section_replacement_keeps_the_rest(tmp_path: Path) -> None:
    docs = tmp_path / "benchmarks.md"
    other = f"{begin_marker('other')}\nkeep me\n{end_marker('other')}"
    docs.write_text(f"# Benchmarks\n\nIntro text.\n\n{begin_marker('t')}\nold table\n{end_marker('t')}\n\n"
                    f"## Later\n\n{other}\ntail\n")
    update_docs_section(docs, "t", "new table\n")
    text = docs.read_text()
    assert "old table" not in text and f"{begin_marker('t')}\nnew table\n{end_marker('t')}" in text
    assert text.startswith("# Benchmarks\n\nIntro text.\n\n") and text.endswith(f"## Later\n\n{other}\ntail\n")
    update_docs_section(docs, "fresh", "appended\n")
    assert docs.read_text().endswith(f"{begin_marker('fresh')}\nappended\n{end_marker('fresh')}\n")
    assert "new table" in docs.read_text()


def test_docs_table_from_results(tmp_path: Path) -> None:
    run_fake(tmp_path, strategies=["full", "freeze:1"])
    rows, bench = load_bench(tmp_path)
    body = docs_section("matbench_jdft2d", rows, bench, command="matforge bench finetune ...",
                        machine="CPU X, 2 cores", date="2025-01-01")
    lines = body.splitlines()
    assert "- machine: CPU X, 2 cores" in lines and "- date: 2025-01-01" in lines
    scratch = "| scratch (A, random weights) | full (from scratch) | 15.05 ± 0.050 |"
    assert any(line.startswith(scratch) for line in lines)
    assert any(line.startswith("| A | embedding + first 1 block frozen | 10.55 ± 0.050 |") for line in lines)
    assert any(line.startswith("| CGCNN (Matbench v0.1) (published) | — | 49.24 |") for line in lines)


# -- end to end with the real fine-tuning API --------------------------------------------------------

def test_cli_end_to_end_on_the_matbench_fixture(tmp_path: Path) -> None:
    from matforge.cli.main import main

    out, docs = tmp_path / "bench", tmp_path / "docs" / "benchmarks.md"
    argv = ["bench", "finetune", "--backbones", "cgcnn-formation-energy,none", "--tasks",
            f"matbench:{MATBENCH_FIXTURE}", "--folds", "1", "--strategies", "full,freeze:1", "--epochs", "2",
            "--batch-size", "4", "--jobs", "1", "--cache-dir", str(tmp_path / "cache"), "--out", str(out),
            "--docs", str(docs)]
    assert main(argv) == 0
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and all(r["status"] == "ok" for r in rows), rows
    assert {(r["backbone"], r["strategy"]) for r in rows} == {
        ("cgcnn-formation-energy", "full"), ("cgcnn-formation-energy", "freeze:1"), ("none", "full")}
    assert all(r["test_size"] == "1" and r["val_size"] == "1" and r["train_size"] == "3" for r in rows)
    assert all(r["units"] == "meV/atom" and float(r["mae"]) >= 0 for r in rows)
    frozen = next(r for r in rows if r["strategy"] == "freeze:1")
    full = next(r for r in rows if r["strategy"] == "full" and r["backbone"] != "none")
    assert int(frozen["trainable_parameters"]) < int(full["trainable_parameters"])
    split = json.loads((out / "splits" / "matbench_jdft2d" / "fold0.json").read_text())
    predictions = (out / "cells" / full["key"] / "run" / "predictions.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in predictions[1:]] == split["test"]
    assert "full fine-tuning" in (out / "summary.md").read_text()
    assert (out / "plots" / "parity_matbench_jdft2d.png").exists()
    assert begin_marker("matbench_jdft2d") in docs.read_text()
    assert main(argv) == 0  # resumed: nothing to run
    assert len(list((out / "cells").glob("*/metrics.json"))) == 3


def test_given_split_loader_puts_the_test_file_in_the_test_set(tmp_path: Path) -> None:
    from matforge.finetune.harness import load_task_data
    from matforge.finetune.tasks import Source

    task = Task(name="mlearn_fixture", units="eV/atom", description="", protocol="given_split", folds=1,
                sources=(Source(("Li_training.json",), "mlearn", "energy_forces",
                                test_files=("Mo_training_shear.json",)),))
    data = load_task_data(task, FIXTURES / "mlearn", str(tmp_path / "cache"))
    assert len(data.ids) == 8 and [data.ids[i] for i in data.test_positions] == ["Mo-train-0"]
    assert len(data.file_sha256) == 2 and all(len(h) == 64 for h in data.file_sha256)
    split = F.make_folds(task, len(data.ids), [0], groups=data.groups, test_positions=data.test_positions)[0]
    assert split.test.tolist() == data.test_positions.tolist()
    assert len(split.val) >= 1 and 7 not in set(split.train_order.tolist()) | set(split.val.tolist())
