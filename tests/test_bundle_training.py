"""The bundle's training, evaluation, resume and multi-process launch, run for real on a tiny synthetic set."""

import csv
import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow

from scripts.data.labels import LabelToMaskd
from tests.conftest import COMMON, REPO, TINY, bundle_env, config_files, run_bundle

TRAIN = "configs/train.json"
EVALUATE = "configs/evaluate.json"
MULTI_GPU = "configs/multi_gpu_train.json"
META = "configs/metadata.json"


@pytest.mark.parametrize("files", [(COMMON, TRAIN), (COMMON, TRAIN, EVALUATE)], ids=["train", "train+evaluate"])
def test_model_zoo_properties_are_complete(files, tiny_siim, tmp_path):
    workflow = ConfigWorkflow(
        config_file=[str(REPO / f) for f in (*files, TINY)],
        meta_file=str(REPO / META),
        logging_file=str(REPO / "configs/logging.conf"),
        workflow_type="train",
        dataset_dir=str(tiny_siim),
        output_dir=str(tmp_path / "out"),
        ckpt_dir=str(tmp_path / "models"),
    )
    workflow.initialize()
    assert workflow.check_properties() == []


def test_metadata_exposes_the_pneumothorax_label_and_exact_versions():
    meta = json.loads((REPO / META).read_text())
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"] == {"1": "pneumothorax"}
    assert meta["network_data_format"]["inputs"]["image"]["num_channels"] == 1
    assert len(meta["network_data_format"]["inputs"]["image"]["spatial_shape"]) == 2
    assert meta["version"] in meta["changelog"]
    pinned = dict(line.split("==") for line in (REPO / "requirements.txt").read_text().split() if "==" in line)
    assert meta["monai_version"] == pinned["monai"] and meta["pytorch_version"] == pinned["torch"]
    assert meta["numpy_version"] == pinned["numpy"]
    for name, version in meta["required_packages_version"].items():
        assert pinned[name] == version, name


def test_network_maps_one_channel_to_one_channel():
    parser = ConfigParser()
    parser.read_config([str(REPO / COMMON), str(REPO / TRAIN)])
    network = parser.get_parsed_content("network_def")
    out = network(torch.rand(1, 1, 64, 96))
    assert out.shape == (1, 1, 64, 96) and out.dtype == torch.float32


def train_args(data, out, *extra_files, **overrides):
    args = ["run", "--config_file", config_files(COMMON, TRAIN, TINY, *extra_files), "--meta_file", META]
    args += ["--logging_file", "configs/logging.conf", "--dataset_dir", str(data)]
    args += ["--output_dir", str(out / "train"), "--ckpt_dir", str(out / "models")]
    for key, value in overrides.items():
        args += [f"--{key}", str(value)]
    return args


@pytest.fixture(scope="module")
def trained(tiny_siim, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained")
    result = run_bundle(train_args(tiny_siim, out))
    return out, result


@pytest.mark.slow
def test_training_writes_best_model_checkpoint_and_logs(trained):
    out, result = trained
    weights = torch.load(out / "models" / "model.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in weights.values())
    assert json.loads((out / "models" / "model.json").read_text())["metric"] == "val_competition_dice"
    checkpoint = torch.load(out / "train" / "checkpoint.pt", weights_only=True)
    assert checkpoint["trainer"]["epoch"] == 2
    assert {"network", "optimizer", "lr_scheduler", "rng"} <= set(checkpoint)
    assert list((out / "train").glob("events.out.tfevents.*"))
    log = result.stdout + result.stderr
    for name in ("val_competition_dice", "val_pixel_dice", "val_sensitivity", "val_specificity"):
        assert name in log


@pytest.mark.slow
def test_the_saved_model_records_its_network_and_inference_needs_no_override(trained, tiny_siim):
    out, _ = trained
    record = json.loads((out / "models" / "model.json").read_text())
    assert record["network"]["target"] == "AttentionUnet" and record["network"]["channels"] == [4, 8, 16]
    args = ["run", "--config_file", config_files(COMMON, "configs/inference.json"), "--meta_file", META]  # no TINY
    args += ["--dataset_dir", str(tiny_siim / "dicom-images-test"), "--output_dir", str(out / "inference"),
             "--ckpt_dir", str(out / "models"), "--roi_size", "[64,64]"]  # fmt: skip
    run_bundle(args)
    rows = (out / "inference" / "submission.csv").read_text().splitlines()
    assert rows[0] == "ImageId,EncodedPixels" and len(rows) == 3


@pytest.mark.slow
def test_evaluation_scores_the_fold_and_saves_the_best_thresholds(trained, tiny_siim):
    out, _ = trained
    eval_dir = out / "eval"
    args = ["run", "--config_file", config_files(COMMON, TRAIN, EVALUATE, TINY), "--meta_file", META]
    args += ["--dataset_dir", str(tiny_siim), "--output_dir", str(eval_dir), "--ckpt_dir", str(out / "models")]
    run_bundle(args)
    summary = json.loads((eval_dir / "metrics.json").read_text())
    assert summary["images"] == 4  # fold 0 of 20 images in 5 folds
    metrics = summary["metrics"]
    assert {"val_competition_dice", "val_pixel_dice", "val_sensitivity", "val_specificity", "val_tuned_competition_dice"} <= set(metrics)
    # the grid holds the configured triple (0.75, 2000, 0.3), so tuning can only match or beat it
    assert metrics["val_tuned_competition_dice"] >= metrics["val_competition_dice"] - 1e-9
    thresholds = json.loads((out / "models" / "thresholds.json").read_text())
    assert {"top", "min_area", "bottom", "competition_dice", "grid"} <= set(thresholds)
    assert thresholds["competition_dice"] == pytest.approx(metrics["val_tuned_competition_dice"])
    with open(eval_dir / "val_competition_dice_raw.csv") as handle:
        rows = list(csv.reader(handle))
    assert len(rows) == 1 + 4 and rows[1][0].endswith(".dcm")


def checkpoint_epoch(path):
    try:
        return torch.load(path, weights_only=True)["trainer"]["epoch"]
    except (FileNotFoundError, RuntimeError, EOFError):
        return 0


@pytest.mark.slow
def test_training_killed_mid_run_resumes_to_the_same_result(tiny_siim, tmp_path):
    epochs = {"max_epochs": 4}
    # Reference: an uninterrupted run, loading in the main process.
    run_bundle(train_args(tiny_siim, tmp_path / "whole", num_workers=0, **epochs))
    # The same run with two persistent loader workers, killed with SIGKILL once the first epoch's checkpoint is on
    # disk, then resumed: the same weights, since augmentation is seeded per image and epoch, not per worker.
    epochs["num_workers"] = 2
    out = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, "-m", "monai.bundle", *train_args(tiny_siim, out, **epochs)],
        cwd=REPO,
        env=bundle_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    checkpoint = out / "train" / "checkpoint.pt"
    deadline = time.monotonic() + 300
    while checkpoint_epoch(checkpoint) < 1 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = checkpoint_epoch(checkpoint)
    assert 1 <= killed_at < 4, f"the run was not killed mid-way (checkpoint epoch {killed_at})"
    result = run_bundle(train_args(tiny_siim, out, resume="true", **epochs))
    assert f"after epoch {killed_at}" in result.stdout + result.stderr
    resumed = torch.load(checkpoint, weights_only=True)
    whole = torch.load(tmp_path / "whole" / "train" / "checkpoint.pt", weights_only=True)
    assert resumed["trainer"] == whole["trainer"]
    for name, tensor in whole["network"].items():
        torch.testing.assert_close(resumed["network"][name], tensor, rtol=1e-4, atol=1e-5, msg=name)


def training_batches(data, epochs, **overrides):
    parser = ConfigParser()
    parser.read_config([str(REPO / COMMON), str(REPO / TRAIN), TINY])
    parser.update({"bundle_root": str(REPO), "dataset_dir": str(data), **overrides})
    loader, prepare = parser.get_parsed_content("train#dataloader"), parser.get_parsed_content("train#prepare_batch")
    batches = []
    for epoch in range(1, epochs + 1):
        loader.sampler.set_epoch(epoch)
        batches += [prepare(batch, "cpu") for batch in loader]
    return batches


def test_training_batches_depend_on_the_seed_not_on_the_loader_workers(tiny_siim):
    main_process = training_batches(tiny_siim, 2, num_workers=0)
    persistent_workers = training_batches(tiny_siim, 2, num_workers=2)
    assert len(main_process) == len(persistent_workers) == 8  # 16 images per epoch, batches of 4
    for (image_a, label_a), (image_b, label_b) in zip(main_process, persistent_workers):
        assert torch.equal(image_a, image_b) and torch.equal(label_a, label_b)
    other_seed = training_batches(tiny_siim, 1, num_workers=0, seed=1)
    assert not torch.equal(other_seed[0][0], main_process[0][0])
    assert main_process[0][0].shape == (4, 1, 64, 64) and main_process[0][0].dtype == torch.float32
    assert any(label.sum() > 0 for _, label in main_process)


@pytest.mark.slow
def test_resume_without_a_checkpoint_is_a_clear_error(tiny_siim, tmp_path):
    result = run_bundle(train_args(tiny_siim, tmp_path, resume="true"), check=False)
    assert result.returncode != 0
    assert "no checkpoint to resume from" in result.stderr


@pytest.mark.slow
def test_two_process_torchrun_on_cpu_trains_with_gloo(tiny_siim, tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "monai.bundle"]
    command += train_args(tiny_siim, tmp_path, MULTI_GPU, max_epochs=1)
    result = subprocess.run(command, cwd=REPO, env=bundle_env(), capture_output=True, text=True, timeout=600)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-6000:]
    assert torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert torch.load(tmp_path / "train" / "checkpoint.pt", weights_only=True)["trainer"]["epoch"] == 1
    assert log.count("Epoch[1] Metrics") == 1  # validation gathered across ranks, reported by rank 0 only


def test_both_caches_hold_uint8_images_and_validation_converts_on_the_device(tiny_siim):
    parser = ConfigParser()
    parser.read_config([str(REPO / COMMON), str(REPO / TRAIN), TINY])
    parser.update({"bundle_root": str(REPO), "dataset_dir": str(tiny_siim), "num_workers": 0})
    for name in ("train", "validate"):
        cached = parser.get_parsed_content(f"{name}#dataset")._cache[0]
        assert cached["image"].dtype == torch.uint8 and cached["image"].shape == (1, 96, 96), name
        assert cached["label"].dtype == np.uint8 and cached["label"].shape == (1, 96, 12), name  # 8 pixels a byte
    batch = next(iter(parser.get_parsed_content("validate#dataloader")))
    image, label = parser.get_parsed_content("validate#prepare_batch")(batch, "cpu")
    assert image.dtype == label.dtype == torch.float32 and label.shape == image.shape
    assert torch.equal(image, batch["image"].float() / 255.0) and image.meta["filename_or_obj"] == batch["image"].meta["filename_or_obj"]
    item = parser.get_parsed_content("validate#dataset").data[0]
    truth = LabelToMaskd("label", ref_key="image")(parser.get_parsed_content("image_loading#0")({**item}))["label"]  # (1, cols, rows)
    assert torch.equal(label[0], torch.as_tensor(truth).float())


@pytest.mark.slow
def test_compiled_training_saves_weights_the_plain_network_loads(tiny_siim, tmp_path):
    run_bundle(train_args(tiny_siim, tmp_path, compile="true", max_epochs=1))
    parser = ConfigParser()
    parser.read_config([str(REPO / COMMON), str(REPO / TRAIN), TINY])
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(tmp_path / "models" / "model.pt", weights_only=True))  # strict: no _orig_mod.
    checkpoint = torch.load(tmp_path / "train" / "checkpoint.pt", weights_only=True)
    network.load_state_dict(checkpoint["network"])


@pytest.mark.slow
def test_a_run_shorter_than_val_interval_still_validates_and_saves_its_model(tiny_siim, tmp_path):
    result = run_bundle(train_args(tiny_siim, tmp_path, max_epochs=1, val_interval=5))
    assert torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert json.loads((tmp_path / "models" / "model.json").read_text())["epoch"] == 1
    assert f"model: {tmp_path / 'models' / 'model.pt'}" in result.stdout + result.stderr
