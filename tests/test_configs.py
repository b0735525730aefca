"""One rule per concept in the configs: shared definitions written once, switches, ranks, the bundle's identity."""

import json

import pytest
import torch
from ignite.handlers import ProgressBar
from monai.bundle import ConfigParser
from monai.handlers import StatsHandler, TensorBoardStatsHandler

from scripts.utils.distributed import handlers_for_this_rank
from scripts.utils.metadata import bundle_identity
from tests.conftest import COMMON, REPO

SHARED = ("network_config", "device", "amp", "amp_dtype", "channels_last", "memory_format", "num_workers", "triplet", "image_loading")


def read(*names):
    parser = ConfigParser()
    parser.read_config([str(REPO / name) for name in names])
    return parser


def test_shared_definitions_live_in_common_json_only():
    common = json.loads((REPO / COMMON).read_text())
    assert set(SHARED) <= set(common)
    for name, own in (("train.json", ()), ("inference.json", ()), ("evaluate.json", ()), ("multi_gpu_train.json", ("device",))):
        config = json.loads((REPO / "configs" / name).read_text())
        assert set(SHARED) & set(config) == set(own), name  # multi-GPU: each rank's own device


def test_training_validation_and_inference_load_images_with_the_same_steps():
    train = read(COMMON, "configs/train.json")
    infer = read(COMMON, "configs/inference.json")
    steps = [type(t).__name__ for t in train.get_parsed_content("train#deterministic_transforms")]
    assert steps == ["LoadRadiographd", "EnsureChannelFirstd", "NormalizeRadiographd", "ImageToUint8d", "LabelToMaskd",
                     "ResizeWholed", "PackMaskd"]  # fmt: skip
    validation = [type(t).__name__ for t in train.get_parsed_content("validate#preprocessing").transforms]
    assert validation == [step for step in steps if step != "ResizeWholed"]  # the inferer resizes, scores at full size
    inference = [type(t).__name__ for t in infer.get_parsed_content("preprocessing").transforms]
    assert inference == ["SelectRadiographd", *steps[:4], "Uint8ToFloatd"]


def test_any_loading_step_can_be_overridden_from_the_command_line():
    parser = read(COMMON, "configs/train.json")
    parser.update({"image_loading#2#mode": "bits"})
    normalize = parser.get_parsed_content("train#deterministic_transforms")[2]
    assert normalize.normalizer.mode == "bits"


def test_only_the_prepare_batch_of_training_augments():
    parser = read(COMMON, "configs/train.json")
    train, validate = parser.get_parsed_content("train#prepare_batch"), parser.get_parsed_content("validate#prepare_batch")
    assert type(train).__name__ == "AugmentOnDevice" and type(validate).__name__ == "ConvertOnDevice"
    from monai.engines.utils import PrepareBatch

    assert isinstance(train, PrepareBatch) and isinstance(validate, PrepareBatch)
    image = torch.randint(0, 256, (2, 1, 8, 8), dtype=torch.uint8)
    label = torch.from_numpy(__import__("numpy").packbits((image > 128).numpy(), axis=-1))
    out_image, out_label = validate({"image": image, "label": label, "augment": "never read"}, "cpu")
    assert torch.equal(out_image, image.float() / 255.0) and torch.equal(out_label, (image > 128).float())


def test_reporting_handlers_are_dropped_on_other_ranks_by_type_not_position(monkeypatch, tmp_path):
    class Validation:  # stands for ValidationHandler, EarlyStopHandler, the checkpoint handlers: kept everywhere
        pass

    class MyStats(StatsHandler):  # a subclass still reports
        pass

    handlers = [StatsHandler(), Validation(), TensorBoardStatsHandler(log_dir=str(tmp_path)), ProgressBar(), MyStats()]
    assert handlers_for_this_rank(handlers) == handlers
    monkeypatch.setattr("scripts.utils.distributed.is_main_process", lambda: False)
    assert handlers_for_this_rank(handlers) == [handlers[1]]


def test_multi_gpu_override_keeps_no_positional_slicing():
    text = (REPO / "configs" / "multi_gpu_train.json").read_text()
    assert "handlers_for_this_rank(@train#handlers)" in text and "handlers_for_this_rank(@validate#handlers)" in text
    assert "[:" not in text


def test_name_and_version_come_from_metadata_json():
    metadata = json.loads((REPO / "configs" / "metadata.json").read_text())
    identity = bundle_identity()
    assert (identity.name, identity.version) == (metadata["name"], metadata["version"])
    assert metadata["version"] in metadata["changelog"]


def test_a_metadata_file_without_a_version_is_refused_by_name(tmp_path):
    (tmp_path / "metadata.json").write_text(json.dumps({"name": "x"}))
    with pytest.raises(ValueError, match="metadata.json: no version"):
        bundle_identity(tmp_path / "metadata.json")


def test_inference_prefers_the_tuned_thresholds_and_an_explicit_override_beats_both(tmp_path):
    (tmp_path / "thresholds.json").write_text(json.dumps({"top": 0.6, "min_area": 1000, "bottom": 0.4}))

    def used(**overrides):
        parser = read(COMMON, "configs/inference.json")
        parser.update({"ckpt_dir": str(tmp_path), **overrides})
        return parser.get_parsed_content("postprocessing").transforms[2].threshold.triplet

    assert (used().top, used().min_area, used().bottom) == (0.6, 1000, 0.4)
    assert used(triplet={"top": 0.9, "min_area": 0, "bottom": 0.5}).top == 0.6  # only the fallback
    forced = used(thresholds={"top": 0.9, "min_area": 0, "bottom": 0.5, "min_component": 0})
    assert (forced.top, forced.min_area, forced.bottom) == (0.9, 0, 0.5)
    (tmp_path / "thresholds.json").unlink()
    assert used().top == 0.75 and used(triplet={"top": 0.9, "min_area": 0, "bottom": 0.5}).top == 0.9


def test_inference_takes_the_tuned_gate_threshold_else_gate_threshold_and_an_explicit_gate_beats_both(tmp_path):
    def gate(**overrides):
        parser = read(COMMON, "configs/inference.json")
        parser.update({"ckpt_dir": str(tmp_path), **overrides})
        return parser.get_parsed_content("postprocessing").transforms[1].threshold

    (tmp_path / "thresholds.json").write_text(json.dumps({"top": 0.6, "min_area": 1000, "bottom": 0.4}))
    assert gate() == 0.5 and gate(gate_threshold=0.7) == 0.7  # tuned without a gate: the config's threshold
    (tmp_path / "thresholds.json").write_text(json.dumps({"top": 0.6, "min_area": 1000, "bottom": 0.4, "gate": 0.3}))
    assert gate() == 0.3 and gate(gate_threshold=0.7) == 0.3 and gate(gate=0.8) == 0.8
