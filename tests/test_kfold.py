"""The K-fold command: folds in sequence, each resumable, ending in an ensemble that inference.json runs."""

import json
import subprocess
import sys

import pytest

from tests.conftest import COMMON, REPO, TINY, bundle_env, config_files, run_bundle

META = ["--meta_file", "configs/metadata.json"]


def _kfold(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scripts.training.kfold", *args], cwd=REPO, env=bundle_env(),
                          capture_output=True, text=True, timeout=900)  # fmt: skip


def test_the_kfold_command_refuses_what_it_sets_itself():
    result = _kfold("--folds", "3", "--config_file", config_files(COMMON, "configs/train.json"), "--fold", "1")
    assert result.returncode == 2 and "--fold: set by the K-fold command for each fold" in result.stderr
    result = _kfold("--folds", "1", "--config_file", config_files(COMMON, "configs/train.json"))
    assert result.returncode == 2 and "K-fold needs at least 2 folds" in result.stderr


@pytest.mark.slow
def test_kfold_trains_each_fold_once_resumes_a_stopped_one_and_leaves_an_ensemble_for_inference(tiny_siim, tmp_path):
    models = tmp_path / "models"
    args = ["--folds", "2", "--config_file", config_files(COMMON, "configs/train.json", TINY), *META,
            "--dataset_dir", str(tiny_siim), "--ckpt_dir", str(models), "--output_dir", str(tmp_path / "runs")]  # fmt: skip
    first = _kfold(*args, "--max_epochs", "1", "--evaluate", "--weight_by_score")
    assert first.returncode == 0, first.stderr[-4000:]
    for fold in (0, 1):
        finished = json.loads((models / f"fold{fold}" / "fold.json").read_text())
        assert finished["fold"] == fold and finished["n_folds"] == 2 and finished["epoch"] == 1
        assert (models / f"fold{fold}" / "model.pt").is_file() and (models / f"fold{fold}" / "model.json").is_file()
        assert (models / f"fold{fold}" / "thresholds.json").is_file()  # --evaluate: each fold's own search
    ensemble = json.loads((models / "ensemble.json").read_text())
    assert ensemble["checkpoints"] == ["$@ckpt_dir + '/fold0/model.pt'", "$@ckpt_dir + '/fold1/model.pt'"]
    assert ensemble["ensemble_weights"] == [fold["score"] for fold in ensemble["kfold_folds"]]

    (models / "fold1" / "fold.json").unlink()  # as if fold 1 had been killed after its first epoch
    again = _kfold(*args, "--max_epochs", "2")
    assert again.returncode == 0, again.stderr[-4000:]
    assert "fold 0/2: finished earlier" in again.stderr
    assert f"fold 1/2: resuming from {tmp_path / 'runs' / 'fold1' / 'checkpoint.pt'}" in again.stderr
    assert "Epoch[2]" in again.stdout + again.stderr and "Epoch[1]" not in again.stdout + again.stderr

    inference = run_bundle(["run", "--config_file", config_files(COMMON, "configs/inference.json", str(models / "ensemble.json")),
                            *META, "--ckpt_dir", str(models), "--dataset_dir", str(tiny_siim / "dicom-images-test"),
                            "--output_dir", str(tmp_path / "out"), "--roi_size", "[64,64]"])  # fmt: skip
    assert "inference with 2 checkpoint(s)" in inference.stdout + inference.stderr
    assert len((tmp_path / "out" / "submission.csv").read_text().splitlines()) == 3
