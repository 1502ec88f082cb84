"""``matforge predict``: CSV output against the independent reference, failure reports, batching,
element checks; ``matforge import-cgcnn``/``predict`` stay light to import."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import cgcnn_reference as ref
from matforge.cli.main import main
from matforge.models import save
from matforge.models.cgcnn import CGCNN, CGCNNHead
from matforge.models.heads import PropertyHead
from matforge.models.model import AtomisticModel

CGCNN_FOLDER = Path(__file__).parent / "fixtures" / "cgcnn"  # KCl 1000050, C 9000046, CsCl 9009743
PACKAGE_ATOM_INIT = Path(__file__).parents[1] / "models" / "data" / "atom_init.json"
IDS = ["1000050", "9000046", "9009743"]


def random_cgcnn(elements: list[int] | None = None, task: str = "regression") -> AtomisticModel:
    torch.manual_seed(0)
    model = AtomisticModel(CGCNN(atom_fea_len=16, n_conv=2),
                           {"cgcnn": CGCNNHead(16, 8, 2, task=task, mean=-1.0, std=0.5)}, elements=elements)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if "running_var" in name:
                t.uniform_(0.5, 1.5)
            elif "running_mean" in name:
                t.normal_(0.0, 0.3)
    return model.eval()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save(random_cgcnn(), tmp_path_factory.mktemp("models") / "cgcnn")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """The fixture folder plus a row without a CIF and a row with a broken CIF."""
    dst = tmp_path / "cgcnn"
    shutil.copytree(CGCNN_FOLDER, dst)
    with open(dst / "id_prop.csv", "a") as f:
        f.write("nocif,1.0\nbroken,2.0\n")
    (dst / "broken.cif").write_text("data_broken\n_cell_length_a 3.0\n")
    return dst


def read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def reference(model: AtomisticModel, ids: list[str]) -> list[float]:
    sd = {k.split(".", 1)[1] if k.startswith("backbone.") else k.removeprefix("heads.cgcnn."): v
          for k, v in model.state_dict().items()}
    atom_init = ref.read_atom_init(PACKAGE_ATOM_INIT)
    crystals = [ref.featurise_cif(CGCNN_FOLDER / f"{i}.cif", atom_init) for i in ids]
    return ref.predict(sd, {"task": "regression", "n_conv": 2, "n_h": 2}, {"mean": -1.0, "std": 0.5}, crystals)


def test_predict_writes_id_prediction_rows_and_reports_failures(model_dir: Path, folder: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "pred.csv"
    assert main(["predict", str(model_dir), str(folder), "--out", str(out)]) == 0
    rows = read_csv(out)
    assert rows[0] == ["id", "prediction"]
    assert [r[0] for r in rows[1:]] == IDS
    expected = reference(random_cgcnn(), IDS)
    assert [float(r[1]) for r in rows[1:]] == pytest.approx(expected, abs=1e-5)
    err = capsys.readouterr().err.splitlines()
    assert f"{folder}: id_prop.csv line 4: no CIF file nocif.cif for id 'nocif'" in err
    assert any(line.startswith(f"{folder}: id_prop.csv line 5: broken.cif: unreadable CIF") for line in err)
    assert "2 record(s) failed and were left out (see above)" in err
    assert not (tmp_path / "pred.csv.partial").exists()


def test_stdout_output_and_batch_size_do_not_change_predictions(model_dir: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    assert main(["predict", str(model_dir), str(CGCNN_FOLDER), "--batch-size", "1"]) == 0
    printed = list(csv.reader(capsys.readouterr().out.splitlines()))
    out = tmp_path / "pred.csv"
    assert main(["predict", str(model_dir), str(CGCNN_FOLDER), str(CGCNN_FOLDER), "--out", str(out)]) == 0
    written = read_csv(out)
    assert written[0] == printed[0] == ["id", "prediction"]
    assert [r[0] for r in written[1:]] == IDS + IDS  # two sources, in order
    for a, b in zip(printed[1:], written[1:4]):
        assert a[0] == b[0] and float(a[1]) == pytest.approx(float(b[1]), abs=1e-6)


def test_elements_the_model_never_saw_are_reported(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    restricted = save(random_cgcnn(elements=[6]), tmp_path / "carbon-only")
    out = tmp_path / "pred.csv"
    assert main(["predict", str(restricted), str(CGCNN_FOLDER), "--out", str(out)]) == 0
    assert [r[0] for r in read_csv(out)[1:]] == ["9000046"]
    err = capsys.readouterr().err
    assert "id_prop.csv line 1: the model was not trained on element(s) Cl (Z=17), K (Z=19)" in err
    assert "id_prop.csv line 3: the model was not trained on element(s) Cl (Z=17), Cs (Z=55)" in err


def test_all_records_failing_or_a_missing_source_is_an_error(model_dir: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    assert main(["predict", str(model_dir), str(tmp_path / "absent"), "--out", str(tmp_path / "p.csv")]) == 2
    assert "absent: no such file or directory" in capsys.readouterr().err
    assert not (tmp_path / "p.csv").exists()
    empty = tmp_path / "bad"
    empty.mkdir()
    (empty / "id_prop.csv").write_text("x,1.0\n")
    assert main(["predict", str(model_dir), str(empty)]) == 1
    assert "no CIF file x.cif" in capsys.readouterr().err


def test_classifier_and_multi_property_models(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    classifier = save(random_cgcnn(task="classification"), tmp_path / "clf")
    assert main(["predict", str(classifier), str(CGCNN_FOLDER)]) == 0
    rows = list(csv.reader(capsys.readouterr().out.splitlines()))
    assert rows[0] == ["id", "prediction"] and all(0.0 <= float(r[1]) <= 1.0 for r in rows[1:])
    multi = AtomisticModel(CGCNN(atom_fea_len=8, n_conv=1), {"props": PropertyHead(8, ["gap", "logK"])}).eval()
    save(multi, tmp_path / "multi")
    assert main(["predict", str(tmp_path / "multi"), str(CGCNN_FOLDER)]) == 0
    rows = list(csv.reader(capsys.readouterr().out.splitlines()))
    assert rows[0] == ["id", "gap", "logK"] and len(rows) == 4 and len(rows[1]) == 3


def test_cli_modules_do_not_import_torch_at_import_time() -> None:
    code = ("import sys, matforge.cli.predict, matforge.cli.import_cgcnn; "
            "heavy = [m for m in ('torch', 'pymatgen', 'ray') if m in sys.modules]; print(heavy)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    parser_help = subprocess.run([sys.executable, "-m", "matforge.cli.main", "--help"], capture_output=True,
                                 text=True, timeout=60)
    assert "import-cgcnn" in parser_help.stdout and "predict" in parser_help.stdout
