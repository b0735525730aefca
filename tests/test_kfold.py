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


def test_the_kfold_command_refuses_what_it_sets_itself_and_datalists_without_k_folds(tmp_path):
    train = config_files(COMMON, "configs/train.json")
    for option in ("--fold", "--n-folds=2", "--ckpt-dir"):
        result = _kfold("--folds", "3", "--config_file", train, option, "1")
        assert result.returncode == 2 and f"{option}" in result.stderr and "set by the K-fold command" in result.stderr
    result = _kfold("--folds", "1", "--config_file", train)
    assert result.returncode == 2 and "K-fold needs at least 2 folds" in result.stderr
    fixed = tmp_path / "fixed.json"
    fixed.write_text(json.dumps({"training": [{"image": "a.dcm", "label": "-1"}], "validation": [{"image": "b.dcm", "label": "-1"}]}))
    result = _kfold("--folds", "3", "--config_file", train, "--datalist_file", str(fixed))
    assert result.returncode == 2 and "has one fixed validation list, no folds to cross-validate" in result.stderr
    folded = tmp_path / "folded.json"
    folded.write_text(json.dumps({"training": [{"image": f"{k}.dcm", "label": "-1", "fold": k % 5} for k in range(10)]}))
    result = _kfold("--folds", "3", "--config_file", train, f"--datalist_file={folded}")
    assert result.returncode == 2 and "has folds [0, 1, 2, 3, 4], not 0..2 (--folds 3)" in result.stderr


@pytest.mark.slow
def test_kfold_trains_each_fold_once_resumes_a_stopped_one_and_leaves_an_ensemble_for_inference(tiny_siim, tmp_path):
    models = tmp_path / "models"
    args = ["--folds", "2", "--config_file", config_files(COMMON, "configs/train.json", TINY), *META,
            "--dataset_dir", str(tiny_siim), "--ckpt_dir", str(models), "--max_epochs", "1"]  # fmt: skip
    first = _kfold(*args)
    assert first.returncode == 0, first.stderr[-4000:]
    for fold in (0, 1):
        finished = json.loads((models / f"fold{fold}" / "fold.json").read_text())
        assert finished["fold"] == fold and finished["n_folds"] == 2 and finished["epoch"] == 1 and finished["trained"]
        assert (models / f"fold{fold}" / "model.pt").is_file() and (models / f"fold{fold}" / "model.json").is_file()
        assert (models / "runs" / f"fold{fold}" / "checkpoint.pt").is_file()  # the training state, under ckpt_dir
    assert not (models / "fold0" / "thresholds.json").exists()

    (models / "fold1" / "fold.json").unlink()  # as if fold 1 had been killed before its training was recorded
    again = _kfold(*args, "--evaluate", "--weight_by_score")  # the same settings, now also evaluated
    assert again.returncode == 0, again.stderr[-4000:]
    assert "fold 0/2: evaluating" in again.stderr and "fold 0/2: training" not in again.stderr
    assert f"fold 1/2: resuming from {models / 'runs' / 'fold1' / 'checkpoint.pt'}" in again.stderr
    for fold in (0, 1):
        assert json.loads((models / f"fold{fold}" / "fold.json").read_text())["evaluated"] is True
        assert (models / f"fold{fold}" / "thresholds.json").is_file()  # each fold's own search
    ensemble = json.loads((models / "ensemble.json").read_text())
    assert ensemble["checkpoints"] == ["$@ckpt_dir + '/fold0/model.pt'", "$@ckpt_dir + '/fold1/model.pt'"]
    assert ensemble["ensemble_weights"] == [fold["score"] for fold in ensemble["kfold_folds"]]

    other = _kfold(*args[:-1], "2")  # --max_epochs 2: another run, not a continuation of this one
    assert other.returncode == 2 and "fold 0 was started with other settings" in other.stderr

    inference = run_bundle(["run", "--config_file", config_files(COMMON, "configs/inference.json", str(models / "ensemble.json")),
                            *META, "--ckpt_dir", str(models), "--dataset_dir", str(tiny_siim / "dicom-images-test"),
                            "--output_dir", str(tmp_path / "out"), "--roi_size", "[64,64]"])  # fmt: skip
    assert "inference with 2 checkpoint(s)" in inference.stdout + inference.stderr
    assert len((tmp_path / "out" / "submission.csv").read_text().splitlines()) == 3
    evaluation = run_bundle(["run", "--config_file", config_files(COMMON, "configs/train.json", "configs/evaluate.json", TINY,
                                                                  str(models / "ensemble.json")),
                             *META, "--ckpt_dir", str(models), "--dataset_dir", str(tiny_siim), "--output_dir", str(tmp_path / "eval"),
                             "--thresholds_file", str(models / "ensemble_thresholds.json")])  # fmt: skip
    assert "inference with 2 checkpoint(s)" in evaluation.stdout + evaluation.stderr
    assert (models / "ensemble_thresholds.json").is_file()  # the ensemble's own thresholds, which inference then uses


@pytest.mark.slow
def test_a_killed_kfold_command_takes_its_folds_run_with_it(tiny_siim, tmp_path):
    """SIGKILL cannot be forwarded: the fold's run asks the kernel to end with its parent (PR_SET_PDEATHSIG)."""
    import os
    import signal
    import time
    from pathlib import Path

    parent = subprocess.Popen([sys.executable, "-m", "scripts.training.kfold", "--folds", "2", "--config_file",
                               config_files(COMMON, "configs/train.json", TINY), *META, "--dataset_dir", str(tiny_siim),
                               "--ckpt_dir", str(tmp_path / "models"), "--max_epochs", "50"],
                              cwd=REPO, env=bundle_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip

    def children() -> list[int]:
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == parent.pid:
                found.append(int(stat.parent.name))
        return found

    deadline = time.monotonic() + 60
    while not children() and time.monotonic() < deadline:
        time.sleep(0.2)
    fold_run = children()
    assert fold_run, "the fold's run did not start"
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 30
    while Path(f"/proc/{fold_run[0]}").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    state = Path(f"/proc/{fold_run[0]}/stat")
    assert not state.exists() or state.read_text().rsplit(")", 1)[1].split()[0] == "Z", "the fold's run outlived the command"
