"""Leakage check between a corpus and downstream sets: which copies StructureMatcher finds (exact,
rattled + strained, supercell), which it must not (fcc vs bcc Cu, other formulas), the filtered
copy of the corpus, and the ``matforge data leakage`` command (registry path, errors)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from matforge.datasets.convert import convert
from matforge.datasets.leakage import DownstreamSet, Match, MatcherSettings, find_leakage, reduced_formula_of
from matforge.datasets.leakage_drop import DROPPED_NAME, write_without
from matforge.datasets.record import Record
from matforge.datasets.shard_dataset import open_dataset



def _atoms_record(record_id: str, atoms) -> Record:
    return Record(id=record_id, numbers=np.array(atoms.numbers), positions=np.array(atoms.positions),
                  cell=np.array(atoms.cell.array), pbc=np.array([True, True, True]), source="test")


def _structure(atoms):
    from pymatgen.io.ase import AseAtomsAdaptor

    return AseAtomsAdaptor.get_structure(atoms)


def _fcc(symbol: str, a: float, cubic: bool = True):
    from ase.build import bulk

    return bulk(symbol, "fcc", a=a, cubic=cubic)


def _rattled_strained(atoms, sigma: float, strain: float, seed: int):
    out = atoms.copy()
    out.positions = out.positions + np.random.default_rng(seed).normal(0.0, sigma, out.positions.shape)
    out.set_cell(out.cell.array @ (np.eye(3) + strain * np.diag([1.0, -0.5, 0.3])), scale_atoms=True)
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six records: fcc Cu (4 atoms), fcc Ag (4), fcc Au (1), fcc Ni (4), a Pt 2x2x2 conventional
    supercell rattled by 0.15 Å (32), and a non-periodic Cu cluster (no cell)."""
    pt = _rattled_strained(_fcc("Pt", 3.92).repeat((2, 2, 2)), 0.15, 0.0, seed=3)
    records = [
        _atoms_record("cu-fcc", _fcc("Cu", 3.61)),
        _atoms_record("ag-fcc", _fcc("Ag", 4.09)),
        _atoms_record("au-prim", _fcc("Au", 4.08, cubic=False)),
        _atoms_record("ni-fcc", _fcc("Ni", 3.52)),
        _atoms_record("pt-rattled", pt),
        Record(id="cu-cluster", numbers=np.array([29, 29, 29]), positions=np.array([[0, 0, 0], [2.5, 0, 0], [0, 2.5, 0.0]]),
               cell=np.zeros((3, 3)), pbc=np.array([False, False, False]), source="test"),
    ]
    out = tmp_path_factory.mktemp("leak") / "corpus"
    convert([], out, records=records)
    return out


def _downstream() -> list[DownstreamSet]:
    from ase.build import bulk

    task_a = DownstreamSet.from_structures("file_a", [
        _structure(_fcc("Cu", 3.61)),                                        # (a) exact copy of cu-fcc
        _structure(bulk("Cu", "bcc", a=2.87)),                               # (c) same formula, bcc: no match
        _structure(_rattled_strained(_fcc("Ag", 4.09), 0.02, 0.01, seed=1)),  # (b) rattled 0.02 Å + 1 % strain
        _structure(_fcc("Pd", 3.89)),                                        # (d) formula not in the corpus
    ], tasks=["task_a"], ids=["a0", "a1", "a2", "a3"])
    task_b = DownstreamSet.from_structures("file_b", [
        _structure(_fcc("Au", 4.08).repeat((2, 2, 2))),   # (b) 32-atom supercell of au-prim
        _structure(_fcc("Pt", 3.92, cubic=False)),        # Pt primitive cell vs the heavily rattled supercell
    ], tasks=["task_b1", "task_b2"], ids=["b0", "b1"])
    return [task_a, task_b]


def test_reduced_formula_of_index_composition() -> None:
    assert reduced_formula_of("8:3-22:1-38:1") == "SrTiO3"
    assert reduced_formula_of("29:1") == "Cu"


def test_matches_exact_rattled_and_supercell_copies_only(corpus: Path) -> None:
    report = find_leakage([corpus], _downstream())
    c = str(open_dataset(corpus).directory)
    assert report.matches == [
        Match("task_a", c, 0, "cu-fcc", 0, "a0", "Cu"),
        Match("task_a", c, 1, "ag-fcc", 2, "a2", "Ag"),
        Match("task_b1", c, 2, "au-prim", 0, "b0", "Au"),
        Match("task_b2", c, 2, "au-prim", 0, "b0", "Au"),
    ]
    rows = {t.task: (t.source, t.downstream_structures, t.shared_formulas, t.corpus_records_matched, t.downstream_matched)
            for t in report.tasks}
    assert rows == {"task_a": ("file_a", 4, 2, 2, 2), "task_b1": ("file_b", 2, 2, 1, 1),
                    "task_b2": ("file_b", 2, 2, 1, 1)}
    (summary,) = report.corpora
    # Cu, Ag, Au, Pt records share a formula; the Cu cluster has no cell; Ni shares none
    assert (summary.num_records, summary.records_compared, summary.records_skipped) == (6, 4, 1)
    assert report.dropped() == {c: [0, 1, 2]}
    assert report.num_corpus_records_matched == 3
    assert json.loads(json.dumps(report.to_dict()))["corpus_records_matched"] == 3


def test_supercell_needs_the_primitive_reduction(corpus: Path) -> None:
    """The Au supercell matches only because both sides are reduced to primitive cells; a supercell
    rattled by 0.15 Å (Pt) keeps its 32 sites, so only ``attempt_supercell`` finds it."""
    no_primitive = find_leakage([corpus], _downstream(), MatcherSettings(primitive_cell=False))
    assert {(m.record_id, m.downstream_id) for m in no_primitive.matches} == {("cu-fcc", "a0"), ("ag-fcc", "a2")}
    supercell = find_leakage([corpus], _downstream()[1:], MatcherSettings(attempt_supercell=True))
    assert {(m.record_id, m.downstream_id) for m in supercell.matches} == {("au-prim", "b0"), ("pt-rattled", "b1")}


def test_drop_writes_only_unmatched_records(corpus: Path, tmp_path: Path) -> None:
    report = find_leakage([corpus], _downstream())
    out = tmp_path / "clean"
    result = write_without([corpus], report.dropped(), out, details=report.to_dict())
    assert (result.num_records, result.num_dropped, result.num_skipped) == (3, 3, 0)
    clean = open_dataset(out)
    assert [r.id for r in clean] == ["ni-fcc", "pt-rattled", "cu-cluster"]
    original = open_dataset(corpus)
    np.testing.assert_array_equal(clean[1].positions, original[4].positions)
    (source,) = clean.manifest.sources
    assert (source["records_read"], source["records_dropped"], source["records_kept"]) == (6, 3, 3)
    listing = json.loads((out / DROPPED_NAME).read_text())
    assert [d["id"] for d in listing["corpora"][0]["dropped"]] == ["cu-fcc", "ag-fcc", "au-prim"]
    assert listing["details"]["corpus_records_matched"] == 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind
    with pytest.raises(Exception, match="not empty"):
        write_without([corpus], report.dropped(), out)
    with pytest.raises(Exception, match="cannot replace a dataset it is read from"):
        write_without([corpus], report.dropped(), corpus, overwrite=True)


def _mdl_file(path: Path, structures: list) -> None:
    """A MatDeepLearn data.json (the layout of ../shared/data/matdeeplearn) of ASE Atoms."""
    rows = [{"structure_id": str(k), "positions": a.positions.tolist(), "cell": a.cell.array.tolist(),
             "atomic_numbers": a.numbers.tolist(), "y": [float(k)]} for k, a in enumerate(structures)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows))


def test_cli_through_the_task_registry(corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from ase.build import bulk

    from matforge.cli.main import main

    root = tmp_path / "data"
    _mdl_file(root / "matdeeplearn" / "jdft2d" / "data.json",
              [_fcc("Ni", 3.52), bulk("Cu", "bcc", a=2.87), _fcc("Pd", 3.89)])
    _mdl_file(root / "matdeeplearn" / "2d_workfunction" / "data.json", [_fcc("Cu", 3.61).repeat((1, 1, 2))])
    report_file, out = tmp_path / "leak.json", tmp_path / "clean"
    code = main(["data", "leakage", str(corpus), "--tasks", "matbench_jdft2d,2d_workfunction", "--data-root", str(root),
                 "--cache-dir", str(tmp_path / "cache"), "--json", str(report_file), "--drop-to", str(out)])
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].split() == ["matbench_jdft2d", "3", "2", "1", "1"]
    assert lines[3].split() == ["2d_workfunction", "1", "1", "1", "1"]
    assert lines[4].startswith("overlap: 2 corpus record(s) match")
    payload = json.loads(report_file.read_text())
    assert [(m["task"], m["record_id"], m["downstream_id"]) for m in payload["matches"]] == [
        ("2d_workfunction", "cu-fcc", "2d_workfunction/0"), ("matbench_jdft2d", "ni-fcc", "jdft2d/0")]
    assert [r.id for r in open_dataset(out)] == ["ag-fcc", "au-prim", "pt-rattled", "cu-cluster"]


@pytest.mark.parametrize("case", ["missing", "not_dataset", "unknown_task", "no_task_data"])
def test_cli_errors_name_the_culprit(case: str, corpus: Path, tmp_path: Path) -> None:
    from matforge.cli.main import main

    corpus_arg, tasks, expected = str(corpus), "matbench_jdft2d", ""
    if case == "missing":
        corpus_arg = str(tmp_path / "nowhere")
        expected = f"{corpus_arg}: no such directory"
    elif case == "not_dataset":
        (tmp_path / "plain").mkdir()
        corpus_arg = str(tmp_path / "plain")
        expected = f"{corpus_arg}: no manifest.json"
    elif case == "unknown_task":
        tasks, expected = "matbench_jdft2d,perov6", "unknown task 'perov6'"
    else:
        expected = "task 'matbench_jdft2d': no data found"
    with pytest.raises(SystemExit) as info:
        main(["data", "leakage", corpus_arg, "--tasks", tasks, "--data-root", str(tmp_path / "empty")])
    message = str(info.value.code)
    assert message.startswith("matforge: error: ") and expected in message
    assert "\n" not in message


def test_real_jdft2d_has_no_fcc_metal_in_it(corpus: Path, tmp_path: Path) -> None:
    from matforge.finetune.leakage_tasks import task_sets
    from matforge.finetune.tasks import default_data_root

    root = default_data_root()
    if root is None or not (root / "matdeeplearn" / "jdft2d" / "data.json").is_file():
        pytest.skip("no ../shared/data/matdeeplearn/jdft2d/data.json")
    (jdft2d,) = task_sets(["jdft2d", "matbench_jdft2d"], root, tmp_path / "cache", verbose=False)
    assert jdft2d.tasks == ("matbench_jdft2d",) and len(jdft2d) == 636
    report = find_leakage([corpus], [jdft2d])
    assert [(t.task, t.downstream_structures, t.corpus_records_matched) for t in report.tasks] == [
        ("matbench_jdft2d", 636, 0)]


def test_science_report_gets_the_per_task_overlap(corpus: Path, tmp_path: Path) -> None:
    """``matforge bench science`` runs the check once, caches it, and its results page shows it."""
    from matforge.experiments.leakage_hook import leakage_overlap
    from matforge.experiments.report import corpus_section

    root = tmp_path / "data"
    _mdl_file(root / "matdeeplearn" / "jdft2d" / "data.json", [_fcc("Ni", 3.52), _fcc("Pd", 3.89)])
    out = tmp_path / "science"
    out.mkdir()
    tasks = ["matbench_jdft2d", "2d_workfunction"]   # the second has no file under this root
    result = leakage_overlap(out, corpus, tasks, data_root=root, cache_dir=tmp_path / "cache")
    assert result["overlap"] == 1
    assert [(t["task"], t["downstream_structures"], t["corpus_records_matched"]) for t in result["tasks"]] == [
        ("matbench_jdft2d", 2, 1)]
    assert [u["task"] for u in result["unavailable"]] == ["2d_workfunction"]
    assert json.loads((out / "leakage.json").read_text()) == result
    assert leakage_overlap(out, corpus, tasks, data_root=tmp_path / "elsewhere") == result   # cached
    page = "\n".join(corpus_section(None, result))
    assert "**1** corpus records match" in page and "| matbench_jdft2d | 2 | 1 | 1 | 1 |" in page
    assert "not checked: 2d_workfunction" in page
    assert leakage_overlap(tmp_path / "other", tmp_path / "no-corpus", tasks, data_root=root) is None
