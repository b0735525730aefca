"""The package layout docs/README.md ("Architecture") describes: each package imports only those before it, and the
format layer needs neither torch nor MONAI."""

import ast
import subprocess
import sys

import pytest

from tests.conftest import REPO, bundle_env

#: The order of docs/README.md's table: a package may import itself and the ones before it.
LAYERS = ["utils", "siim", "nih", "data", "networks", "training", "evaluation", "inference", "serving", "synthetic", "benchmark"]
LIGHT = ["scripts.utils.files", "scripts.utils.flags", "scripts.utils.errors", "scripts.utils.metadata", "scripts.utils.processes",
         "scripts.siim.rle",
         "scripts.siim.rle_csv", "scripts.siim.image_id", "scripts.siim.datalist", "scripts.nih.datalist"]  # fmt: skip


def imported_packages(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):  # not ast.Global, whose names are strings
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            for name in names:
                parts = name.split(".")
                if parts[0] == "scripts" and len(parts) > 1:
                    yield parts[1]


def test_every_module_lives_in_a_package_of_the_table():
    loose = sorted(p.name for p in (REPO / "scripts").glob("*.py") if p.name != "__init__.py")
    assert loose == []
    assert sorted(p.name for p in (REPO / "scripts").iterdir() if p.is_dir() and p.name != "__pycache__") == sorted(LAYERS)


@pytest.mark.parametrize("package", LAYERS)
def test_a_package_imports_only_itself_and_the_ones_before_it(package):
    allowed = set(LAYERS[: LAYERS.index(package) + 1])
    for path in (REPO / "scripts" / package).rglob("*.py"):
        wrong = set(imported_packages(path)) - allowed
        assert not wrong, f"{path.relative_to(REPO)} imports scripts.{sorted(wrong)}"


def test_the_format_layer_imports_neither_torch_nor_monai():
    code = f"import sys; import {', '.join(LIGHT)}; print(sorted({{'torch', 'monai'}} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=bundle_env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.slow
def test_the_format_layer_runs_in_the_monai_label_environment(tmp_path):
    """MONAI Label's venv has pydicom 2 and numpy 1.26 (`make setup-label`, which `make test` builds)."""
    python = REPO / ".venv-label" / "bin" / "python"
    assert python.is_file(), "the MONAI Label venv is missing: run `make setup-label`"
    code = (
        f"import {', '.join(LIGHT)}, numpy, pydicom; from scripts.siim import rle; from scripts.siim.image_id import dicom_image_id;"
        "m = numpy.zeros((4, 5), bool); m[1:3, 2] = True; assert rle.decode(rle.encode(m), (4, 5)).tolist() == m.tolist();"
        "print(pydicom.__version__.split('.')[0], numpy.__version__.split('.')[0], dicom_image_id('x/1.2.3.dcm'))"
    )
    result = subprocess.run([str(python), "-c", code], cwd=REPO, env=bundle_env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["2", "1", "1.2.3"]
