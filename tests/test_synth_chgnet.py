"""``matforge data synth --calculator chgnet``: CHGNet labels in matforge's units and signs (finite
differences), deterministic chunks, resume after an interrupt, refusal of changed settings, the outlier
filter, the manifest's provenance, trajectory flags, and the missing-extra message.

Tiny: ASE's reference crystals only, cells of at most 4 atoms, a few dozen frames."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from importlib.metadata import metadata, version

import numpy as np
import pytest

from matforge.cli.main import main
from matforge.datasets import open_dataset
from matforge.datasets import corpus_writer
from matforge.datasets.chgnet_labels import EV_PER_A3_IN_GPA, Labels
from matforge.datasets.corpus_frames import (
    MAX_FORCE,
    MAX_STRESS_GPA,
    CorpusSettings,
    make_chunk,
    outlier_reason,
)
from matforge.datasets.corpus_seeds import load_seed_structures, substitute, substitution_targets
from matforge.datasets.corpus_writer import chunk_path, work_dir, write_corpus
from matforge.datasets.manifest import Manifest

SOURCES = ("ase-reference",)
SETTINGS = CorpusSettings(structures=24, seed=5, max_atoms=4, chunk_frames=8)

needs_chgnet = pytest.mark.skipif(importlib.util.find_spec("chgnet") is None,
                                  reason="the corpus extra (chgnet) is not installed")


def _records(directory):
    return list(open_dataset(directory))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    pytest.importorskip("chgnet")
    out = tmp_path_factory.mktemp("corpus") / "a"
    report = write_corpus(out, SETTINGS, sources=SOURCES, log=lambda m: None)
    return out, report


# -- labels ---------------------------------------------------------------------------------------

@needs_chgnet
def test_chgnet_labels_are_derivatives_of_the_energy_in_matforge_convention():
    """Forces = -dE/dr and stress = (1/V) dE/d(strain) (eV/A^3, tensile positive), by central
    differences on a rattled, compressed rock-salt cell; equal to predict_structure's in its units."""
    from ase.build import bulk
    from pymatgen.io.ase import AseAtomsAdaptor

    from matforge.datasets.chgnet_labels import ChgnetLabeller

    labeller = ChgnetLabeller()
    atoms = bulk("NaCl", "rocksalt", a=5.5)
    atoms.positions[0] += [0.05, -0.03, 0.02]
    atoms.set_cell(atoms.cell.array @ (np.eye(3) + np.diag([-0.03, 0.01, 0.0])), scale_atoms=True)
    labels = labeller([atoms])[0]

    def energy(a) -> float:
        return labeller([a])[0].energy

    h = 1e-2  # Å; CHGNet runs in float32
    for i in range(len(atoms)):
        for d in range(3):
            plus, minus = atoms.copy(), atoms.copy()
            plus.positions[i, d] += h
            minus.positions[i, d] -= h
            assert -(energy(plus) - energy(minus)) / (2 * h) == pytest.approx(labels.forces[i, d], abs=3e-3)
    volume, h = atoms.get_volume(), 1e-3
    for i, j in [(0, 0), (1, 1), (2, 2), (0, 1), (1, 2)]:
        eps = np.zeros((3, 3))
        eps[i, j] = eps[j, i] = h if i == j else h / 2
        plus, minus = atoms.copy(), atoms.copy()
        plus.set_cell(atoms.cell.array @ (np.eye(3) + eps), scale_atoms=True)
        minus.set_cell(atoms.cell.array @ (np.eye(3) - eps), scale_atoms=True)
        numeric = (energy(plus) - energy(minus)) / (2 * h) / volume
        assert numeric == pytest.approx(labels.stress[i, j], abs=5e-5), (i, j)
    assert labels.stress[0, 0] < 0  # compressed along x: negative (compressive) in ASE's sign
    np.testing.assert_allclose(labels.stress, labels.stress.T, atol=1e-12)

    raw = labeller.model.predict_structure(AseAtomsAdaptor.get_structure(atoms), task="efs")
    assert labels.energy == pytest.approx(float(raw["e"]) * len(atoms), abs=1e-4)
    np.testing.assert_allclose(labels.forces, raw["f"], atol=1e-4)
    np.testing.assert_allclose(labels.stress, raw["s"] / EV_PER_A3_IN_GPA, atol=1e-5)


def test_outlier_reasons():
    ok = Labels(-10.0, np.zeros((2, 3)), np.zeros((3, 3)))
    assert outlier_reason(ok, 2) is None
    force = Labels(-10.0, np.array([[0.0, 0.0, MAX_FORCE + 1], [0, 0, 0]]), np.zeros((3, 3)))
    assert outlier_reason(force, 2).startswith("force outlier")
    stress = Labels(-10.0, np.zeros((2, 3)), np.eye(3) * (MAX_STRESS_GPA + 1) / EV_PER_A3_IN_GPA)
    assert outlier_reason(stress, 2).startswith("stress outlier")
    assert outlier_reason(Labels(-40.0, np.zeros((2, 3)), np.zeros((3, 3))), 2).startswith("energy outlier")
    assert outlier_reason(Labels(12.0, np.zeros((2, 3)), np.zeros((3, 3))), 2).startswith("energy outlier")


# -- seeds ----------------------------------------------------------------------------------------

def test_substitutions_stay_in_the_group_and_in_allowed_elements():
    seeds, counts = load_seed_structures(4, sources=SOURCES, log=lambda m: None)
    assert counts == {"ase-reference": len(seeds)} and len(seeds) > 40
    assert set(substitution_targets(8)) == {16, 34}  # O -> S, Se
    assert substitution_targets(1) == () and substitution_targets(18) == ()  # H, noble gases stay
    from pymatgen.core.periodic_table import Element

    rng = np.random.default_rng(0)
    for seed in seeds:
        atoms, mapping = substitute(seed, rng, probability=1.0)
        for old, new in mapping.items():
            assert Element.from_Z(old).group == Element.from_Z(new).group
            assert abs(Element.from_Z(old).row - Element.from_Z(new).row) <= 2
    allowed = frozenset({29, 47, 79})  # Cu, Ag, Au
    metals, _ = load_seed_structures(4, sources=SOURCES, allowed=allowed, log=lambda m: None)
    assert metals and all(set(s.numbers) <= {29, 47, 79, 3, 11, 19, 37, 55} for s in metals)
    for seed in metals:
        atoms, _ = substitute(seed, rng, probability=0.5, allowed=allowed)
        assert set(atoms.numbers) <= allowed


def test_missing_seed_source_is_skipped_with_a_note(monkeypatch):
    from matforge.datasets import corpus_seeds

    monkeypatch.setattr(corpus_seeds, "data_roots", lambda: [])
    notes: list[str] = []
    seeds, counts = load_seed_structures(8, sources=("carbon24", "ase-reference"), log=notes.append)
    assert "carbon24" not in counts and counts["ase-reference"] == len(seeds)
    assert any("carbon24 skipped" in n for n in notes)


# -- stand-in labeller: outliers ------------------------------------------------------------------

_CALLS = {"n": 0}


def cycling_labeller():
    """A stand-in labeller (factory): every 5th structure gets a huge force, a huge stress, an absurd
    energy, or fails, in turn; the others get small, harmless labels."""
    _CALLS["n"] = 0

    def label(atoms_list):
        out = []
        for atoms in atoms_list:
            i = _CALLS["n"]
            _CALLS["n"] += 1
            n = len(atoms)
            forces = np.full((n, 3), 0.01)
            stress = np.eye(3) * 1e-3
            energy = -3.0 * n
            kind = i % 5
            if kind == 1:
                forces[0, 0] = 2 * MAX_FORCE
            elif kind == 2:
                stress[0, 1] = stress[1, 0] = 2 * MAX_STRESS_GPA / EV_PER_A3_IN_GPA
            elif kind == 3:
                energy = -100.0 * n
            elif kind == 4:
                out.append("stand-in refuses")
                continue
            out.append(Labels(energy, forces, stress))
        return out

    return label


def test_outliers_are_dropped_counted_and_listed(tmp_path):
    out = tmp_path / "o"
    settings = CorpusSettings(structures=30, seed=1, max_atoms=4, chunk_frames=10)
    report = write_corpus(out, settings, sources=SOURCES, factory=cycling_labeller, log=lambda m: None)
    skipped = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
    by_reason: dict[str, int] = {}
    for entry in skipped:
        by_reason[entry["reason"].split(":")[0]] = by_reason.get(entry["reason"].split(":")[0], 0) + 1
    assert set(by_reason) == {"force outlier", "stress outlier", "energy outlier", "labeller failed"}
    assert by_reason == report.skipped_reasons
    manifest = Manifest.read(out)
    assert manifest.num_skipped == len(skipped) == report.num_skipped
    generated = next(s for s in manifest.sources if s["path"] == "generated")
    assert generated["dropped_reasons"] == by_reason and generated["frames_dropped"] == len(skipped)
    assert report.num_records + report.num_skipped == settings.structures  # every index is one attempt
    for record in _records(out):
        assert np.abs(record.forces).max() < MAX_FORCE and record.energy / record.natoms > -15


# -- the CHGNet corpus ----------------------------------------------------------------------------

@needs_chgnet
def test_corpus_opens_with_labels_and_flags(corpus):
    out, report = corpus
    records = _records(out)
    assert len(records) == report.num_records and report.num_records + report.num_skipped == SETTINGS.structures
    ds = open_dataset(out)
    kinds = set()
    runs: dict[str, list] = {}
    for i, record in enumerate(records):
        kind = record.id.split("-", 3)[3]
        kinds.add(kind)
        assert record.natoms <= SETTINGS.max_atoms
        assert record.forces.shape == (record.natoms, 3) and record.stress.shape == (3, 3)
        assert isinstance(record.equilibrium, bool) and ds.equilibrium[i] == int(record.equilibrium)
        if kind in ("md", "relax"):
            runs.setdefault(record.trajectory, []).append(record)
        else:
            assert record.trajectory == record.id and record.frame is None and record.equilibrium is False
        if record.equilibrium:
            assert kind == "relax" and np.sqrt((record.forces ** 2).sum(1)).max() <= 0.05 + 1e-6
    assert {"rattle", "strain"} <= kinds and runs
    for frames in runs.values():
        assert [r.frame for r in frames] == list(range(len(frames)))
        assert all(not r.equilibrium for r in frames[:-1])


@needs_chgnet
def test_manifest_names_the_model_its_licence_and_the_seed_sources(corpus):
    out, _ = corpus
    manifest = Manifest.read(out)
    generated = next(s for s in manifest.sources if s["path"] == "generated")
    labels = generated["labels"]
    assert generated["labels_from_model"] is True
    assert labels["model"] == "CHGNet" and labels["weights_version"] == "0.3.0"
    assert labels["package_version"] == version("chgnet")
    assert labels["licence"] == metadata("chgnet")["License"] == "Modified BSD"
    assert len(labels["weights_sha256"]) == 64
    assert generated["seed_sources"]["ase-reference"] > 40
    assert "tensile positive" in manifest.units["stress"]
    assert not work_dir(out).exists()


@needs_chgnet
def test_chunks_are_deterministic(corpus):
    from matforge.datasets.chgnet_labels import ChgnetLabeller

    out, _ = corpus
    seeds, _ = load_seed_structures(SETTINGS.max_atoms, sources=SOURCES, log=lambda m: None)
    labeller = ChgnetLabeller()
    first = make_chunk(1, SETTINGS, seeds, labeller)
    again = make_chunk(1, SETTINGS, seeds, labeller)
    assert [r.id for r in first.records] == [r.id for r in again.records] and first.skipped == again.skipped
    for a, b in zip(first.records, again.records):
        np.testing.assert_array_equal(a.positions, b.positions)
        assert a.energy == b.energy
    published = {r.id: r for r in _records(out)}
    for r in first.records:
        np.testing.assert_array_equal(published[r.id].positions, r.positions)
        np.testing.assert_allclose(published[r.id].forces, r.forces, rtol=0, atol=1e-6)


@needs_chgnet
def test_interrupted_run_resumes_to_the_same_corpus_and_refuses_changed_settings(corpus, tmp_path, monkeypatch):
    reference, _ = corpus
    out = tmp_path / "b"
    original = corpus_writer._run_chunk

    def interrupt_at_chunk_1(k):
        if k == 1:
            raise KeyboardInterrupt
        return original(k)

    monkeypatch.setattr(corpus_writer, "_run_chunk", interrupt_at_chunk_1)
    with pytest.raises(KeyboardInterrupt):
        write_corpus(out, SETTINGS, sources=SOURCES, log=lambda m: None)
    monkeypatch.setattr(corpus_writer, "_run_chunk", original)
    assert not out.exists() and chunk_path(work_dir(out), 0).is_file()
    assert not chunk_path(work_dir(out), 1).is_file()

    changed = CorpusSettings(structures=SETTINGS.structures, seed=6, max_atoms=4, chunk_frames=8)
    with pytest.raises(ValueError, match=r"different settings \(settings\.seed: was 5, now 6\)"):
        write_corpus(out, changed, sources=SOURCES, log=lambda m: None)

    report = write_corpus(out, SETTINGS, workers=2, sources=SOURCES, log=lambda m: None)  # 2 chunks left: 2 processes
    assert (report.chunks_reused, report.chunks_generated) == (1, 2)
    resumed, expected = _records(out), _records(reference)
    assert [r.id for r in resumed] == [r.id for r in expected]
    for a, b in zip(resumed, expected):
        assert (a.trajectory, a.frame, a.equilibrium) == (b.trajectory, b.frame, b.equilibrium)
        np.testing.assert_array_equal(a.positions, b.positions)
        np.testing.assert_array_equal(a.cell, b.cell)
        assert a.energy == pytest.approx(b.energy, abs=1e-6)
        np.testing.assert_allclose(a.forces, b.forces, rtol=0, atol=1e-6)
        np.testing.assert_allclose(a.stress, b.stress, rtol=0, atol=1e-8)
    assert not work_dir(out).exists()


# -- CLI ------------------------------------------------------------------------------------------

def test_missing_extra_gives_one_clear_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "chgnet", None)  # `import chgnet` now raises ImportError
    with pytest.raises(SystemExit) as exc:
        main(["data", "synth", "--calculator", "chgnet", "--structures", "2", "--out", str(tmp_path / "x")])
    assert str(exc.value) == ('matforge: error: --calculator chgnet needs the corpus extra: '
                              'pip install "matforge[corpus]"')
    assert not (tmp_path / "x").exists()


def test_cli_help_does_not_import_chgnet():
    code = ("import sys, contextlib, io\nfrom matforge.cli.main import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    try:\n        main(['data', 'synth', '--help'])\n    except SystemExit:\n        pass\n"
            "print('chgnet' in sys.modules, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert done.stdout.split() == ["False", "False"]
