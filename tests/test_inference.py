"""Inference on DICOM folders (configs/inference.json): every output, bad files, orientation, ensembles, TTA."""

import csv
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow
from PIL import Image

from scripts.inference.dicom_seg import read_segmentation_mask
from scripts.inference.ensemble import AveragedProbabilities
from scripts.inference.inputs import is_dicom_file, scan_dicom_inputs
from scripts.siim import rle
from scripts.training.checkpoints import load_weights
from scripts.utils.files import safe_name
from tests.conftest import COMMON, REPO, config_files, run_bundle
from tests.helpers import BrightnessNet, asymmetric_case, write_test_dicom
from tests.hostile import rgb_dicom

BRIGHTNESS = str(REPO / "tests" / "configs" / "inference_brightness.json")
SECRET_PATIENT = "SECRET^PATIENT-4711"


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory) -> dict:
    """A folder tree with good radiographs (known masks), broken DICOMs and non-DICOM files."""
    root = tmp_path_factory.mktemp("inference_in")
    truth = {}
    pixels, mask = asymmetric_case(300, 220)
    good = {
        "1.2.826.0.1.3680043.8.498.10": (pixels, mask, {}),
        # the same picture stored MONOCHROME1 in 12 bits: inverted values, the same anatomy and mask
        "1.2.826.0.1.3680043.8.498.11": (
            (4095 - pixels.astype(np.uint16) * 16).astype(np.uint16),
            mask,
            {"photometric": "MONOCHROME1", "bits_stored": 12},
        ),
        # a wide image and an all-dark (empty) one
        "1.2.826.0.1.3680043.8.498.12": (pixels.T.copy(), mask.T.copy(), {}),
        "1.2.826.0.1.3680043.8.498.13": (np.zeros((128, 160), np.uint8), np.zeros((128, 160), bool), {}),
        # a hostile SOPInstanceUID must not steer output paths
        "../../escaped": (pixels, mask, {}),
    }
    for k, (uid, (image, truth_mask, kwargs)) in enumerate(good.items()):
        sub = root / f"study{k}" / "series"
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Invalid value for VR UI")  # the hostile UID, on purpose
            write_test_dicom(
                sub / f"image{k}.dcm", image, sop_instance_uid=uid, patient_id=SECRET_PATIENT, jpeg_quality=None, **kwargs
            )
        truth[uid] = truth_mask
    # a DICOM without an extension is still found
    extensionless = root / "noext" / "IMG0001"
    write_test_dicom(extensionless, pixels, sop_instance_uid="1.2.826.0.1.3680043.8.498.14", jpeg_quality=None)
    truth["1.2.826.0.1.3680043.8.498.14"] = mask
    bad = root / "bad"
    bad.mkdir()
    (bad / "garbage.dcm").write_bytes(b"this is not a DICOM file")
    source = (root / "study0" / "series" / "image0.dcm").read_bytes()
    (bad / "truncated.dcm").write_bytes(source[: len(source) // 2])
    no_pixels = pydicom.dcmread(root / "study0" / "series" / "image0.dcm")
    del no_pixels.PixelData
    no_pixels.SOPInstanceUID = "1.2.3.998"
    no_pixels.save_as(bad / "no_pixels.dcm")
    rgb_dicom(bad / "rgb.dcm")
    (root / "notes.txt").write_text("not an image\n")
    (root / "study0" / "thumbnail.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    return {"root": root, "truth": truth, "bad": sorted(p.name for p in bad.iterdir()), "skipped": 2}


@pytest.fixture(scope="module")
def brightness_weights(tmp_path_factory) -> Path:
    ckpt_dir = tmp_path_factory.mktemp("brightness_ckpt")
    torch.save(BrightnessNet().state_dict(), ckpt_dir / "model.pt")
    return ckpt_dir


def _run_inference(folder: Path, out: Path, ckpt_dir: Path, *extra: str):
    return run_bundle(
        [
            "run",
            "--config_file",
            config_files(COMMON, "configs/inference.json", BRIGHTNESS),
            "--meta_file",
            "configs/metadata.json",
            "--logging_file",
            "configs/logging.conf",
            "--bundle_root",
            str(REPO),
            "--dataset_dir",
            str(folder),
            "--output_dir",
            str(out),
            "--ckpt_dir",
            str(ckpt_dir),
            *extra,
        ]
    )


@pytest.fixture(scope="module")
def inference_run(mixed_folder, brightness_weights, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("inference_out")
    result = _run_inference(mixed_folder["root"], out, brightness_weights, "--write_overlays", "true")
    return {"out": out, "log": result.stdout + result.stderr}


def test_scan_finds_dicoms_recursively_and_skips_other_files(mixed_folder):
    scan = scan_dicom_inputs(mixed_folder["root"])
    names = sorted(p.name for p in scan.files)
    assert "IMG0001" in names and "garbage.dcm" in names and len(scan.files) == 6 + 4
    assert sorted(p.name for p in scan.skipped) == ["notes.txt", "thumbnail.png"]
    single = scan_dicom_inputs(mixed_folder["root"] / "noext" / "IMG0001")
    assert single.files == [mixed_folder["root"] / "noext" / "IMG0001"] and not single.skipped
    assert not is_dicom_file(mixed_folder["root"] / "notes.txt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        scan_dicom_inputs(mixed_folder["root"] / "missing")


@pytest.mark.parametrize("identifier", ["../../x", "..", ".", "", "a/b\\c", "x" * 300, "1.2.3/../4"])
def test_safe_name_stays_in_its_folder(identifier, tmp_path):
    name = safe_name(identifier)
    assert name and "/" not in name and "\\" not in name and not name.startswith(".") and len(name) <= 128
    assert (tmp_path / name).resolve().parent == tmp_path.resolve()


def test_safe_name_keeps_uids_and_separates_lookalikes():
    assert safe_name("1.2.276.0.7230010.3.1.4.8323329.1000.1517875157.4") == "1.2.276.0.7230010.3.1.4.8323329.1000.1517875157.4"
    assert safe_name("a/b") != safe_name("a_b") and safe_name("a/b") != safe_name("a?b")


def test_inference_config_has_every_model_zoo_property(mixed_folder, tmp_path):
    parser = ConfigParser()
    parser.read_config([str(REPO / COMMON), str(REPO / "configs" / "inference.json")])
    torch.save(parser.get_parsed_content("network_def").state_dict(), tmp_path / "model.pt")
    workflow = ConfigWorkflow(
        config_file=[str(REPO / COMMON), str(REPO / "configs" / "inference.json")],
        meta_file=str(REPO / "configs" / "metadata.json"),
        workflow_type="infer",
        output_dir=str(tmp_path / "out"),
        ckpt_dir=str(tmp_path),
        dataset_dir=str(mixed_folder["root"]),
    )
    workflow.initialize()
    assert workflow.check_properties() in (None, [])
    assert not (tmp_path / "out").exists()  # made when the results are published: a failed run leaves none


def test_submission_csv_has_one_row_per_image_in_competition_format(inference_run, mixed_folder):
    text = (inference_run["out"] / "submission.csv").read_text()
    lines = text.splitlines()
    assert lines[0] == "ImageId,EncodedPixels"
    rows = list(csv.reader(lines[1:]))
    truth = mixed_folder["truth"]
    assert sorted(image_id for image_id, _ in rows) == sorted(truth)
    for image_id, encoded in rows:
        expected = truth[image_id]
        if not expected.any():
            assert encoded == "-1"
        else:
            np.testing.assert_array_equal(rle.decode(encoded, expected.shape), expected, err_msg=image_id)


def test_png_masks_match_the_known_truth_in_image_orientation(inference_run, mixed_folder):
    masks = inference_run["out"] / "masks"
    for image_id, expected in mixed_folder["truth"].items():
        png = np.asarray(Image.open(masks / f"{safe_name(image_id)}.png"))
        assert png.shape == expected.shape and png.dtype == np.uint8
        assert set(np.unique(png)) <= {0, 255}
        np.testing.assert_array_equal(png == 255, expected, err_msg=image_id)


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_dicom_seg_per_positive_image_reads_back_and_references_its_source(inference_run, mixed_folder):
    out = inference_run["out"]
    positives = {image_id for image_id, mask in mixed_folder["truth"].items() if mask.any()}
    assert {p.stem for p in (out / "seg").iterdir()} == {safe_name(i) for i in positives}
    sources = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in scan_dicom_inputs(mixed_folder["root"]).files if p.parent.name != "bad"}
    for image_id in positives:
        seg_path = out / "seg" / f"{safe_name(image_id)}.dcm"
        frame = read_segmentation_mask(seg_path)
        png = np.asarray(Image.open(out / "masks" / f"{safe_name(image_id)}.png")) == 255
        np.testing.assert_array_equal(frame.astype(bool), png)
        seg = pydicom.dcmread(seg_path)
        source = pydicom.dcmread(sources[image_id], stop_before_pixels=True)
        assert seg.Modality == "SEG" and seg.StudyInstanceUID == source.StudyInstanceUID
        referenced = seg.ReferencedSeriesSequence[0]
        assert referenced.SeriesInstanceUID == source.SeriesInstanceUID
        assert referenced.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == image_id
        assert seg.SegmentSequence[0].SegmentLabel == "pneumothorax"
        assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "36118008"
        assert seg.SegmentSequence[0].SegmentDescription == "pneumothorax probability 1.000"  # bright = positive


def test_predictions_csv_gives_each_images_probability_and_area_in_input_order_and_the_worklist_ranks_them(inference_run, mixed_folder):
    from scripts.inference.predictions import read_predictions

    out = inference_run["out"]
    submitted = [image_id for image_id, _ in csv.reader((out / "submission.csv").read_text().splitlines()[1:])]
    predictions = read_predictions(out / "predictions.csv")
    assert [p.image_id for p in predictions] == submitted  # one row per image, in input order
    assert (out / "predictions.csv").read_text().splitlines()[0] == "ImageId,probability,area_px,positive"
    for prediction in predictions:
        truth = mixed_folder["truth"][prediction.image_id]
        assert 0.0 <= prediction.probability <= 1.0
        assert prediction.area_px == int(truth.sum()) and prediction.positive == truth.any()
        # no gate: the mask's largest pixel probability (BrightnessNet: near 1 on a bright image, near 0 on a dark one)
        assert prediction.probability > 0.99 if truth.any() else prediction.probability < 0.01
    ranked = read_predictions(out / "worklist.csv")
    assert sorted(ranked, key=lambda p: -p.probability) == ranked and sorted(ranked, key=str) == sorted(predictions, key=str)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["outputs"]["predictions"] == "predictions.csv" and "no image gate" in summary["probability"]


def test_bad_files_are_listed_with_reasons_and_the_rest_processed(inference_run, mixed_folder):
    out = inference_run["out"]
    with open(out / "errors.csv", newline="") as handle:
        errors = list(csv.DictReader(handle))
    # a colour image is not broken but not what the model is for: the input rules skip it (skipped.csv)
    assert sorted(Path(row["file"]).name for row in errors) == [name for name in mixed_folder["bad"] if name != "rgb.dcm"]
    reasons = {Path(row["file"]).name: row["reason"] for row in errors}
    with open(out / "skipped.csv", newline="") as handle:
        skipped = {Path(row["file"]).name: row["reason"] for row in csv.DictReader(handle)}
    assert list(skipped) == ["rgb.dcm"] and "3 samples per pixel" in skipped["rgb.dcm"]
    assert "no pixel data" in reasons["no_pixels.dcm"]
    assert all(reason.strip() for reason in reasons.values())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["processed"] == len(mixed_folder["truth"])
    assert summary["failed"] == summary["errors"] == len(mixed_folder["bad"]) - 1 and summary["skipped_by_rules"] == 1
    assert summary["skipped_non_dicom"] == mixed_folder["skipped"]
    assert summary["positive"] == sum(m.any() for m in mixed_folder["truth"].values())
    assert summary["dicom_files"] == summary["processed"] + summary["failed"] + summary["skipped_by_rules"]
    assert summary["seconds_per_image"] > 0 and summary["thresholds"]["top"] == 0.5


def test_outputs_never_escape_and_patient_data_stays_out_of_logs(inference_run, mixed_folder):
    out = inference_run["out"].resolve()
    for path in out.rglob("*"):
        assert path.resolve().is_relative_to(out)
    assert not (out.parent.parent / "escaped.png").exists()
    assert (out / "masks" / f"{safe_name('../../escaped')}.png").is_file()
    assert SECRET_PATIENT not in inference_run["log"] and "PATIENT-4711" not in inference_run["log"]
    for name in ("summary.json", "errors.csv", "submission.csv"):
        assert "PATIENT-4711" not in (out / name).read_text()


def test_overlays_on_request(inference_run, mixed_folder):
    overlays = inference_run["out"] / "overlays"
    for image_id, expected in mixed_folder["truth"].items():
        picture = np.asarray(Image.open(overlays / f"{safe_name(image_id)}.png"))
        assert picture.shape == (*expected.shape, 3)


def test_no_temporary_files_left(inference_run):
    assert not [p for p in inference_run["out"].rglob("*") if p.name.endswith(".tmp")]


def test_single_file_input_and_flip_tta_with_two_checkpoints(mixed_folder, brightness_weights, tmp_path):
    second = tmp_path / "second.pt"
    torch.save(BrightnessNet(gain=20.0).state_dict(), second)
    image = mixed_folder["root"] / "study0" / "series" / "image0.dcm"
    out = tmp_path / "out"
    _run_inference(
        image,
        out,
        brightness_weights,
        "--tta",
        "true",
        "--checkpoints",
        f"['{brightness_weights / 'model.pt'}','{second}']",
        "--write_seg",
        "false",
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["processed"] == 1 and summary["tta"] is True and len(summary["checkpoints"]) == 2
    png = np.asarray(Image.open(out / "masks" / f"{safe_name('1.2.826.0.1.3680043.8.498.10')}.png")) == 255
    np.testing.assert_array_equal(png, mixed_folder["truth"]["1.2.826.0.1.3680043.8.498.10"])
    assert not (out / "seg").exists()


def test_averaged_probabilities_is_the_mean_probability_over_checkpoints_and_flips(tmp_path):
    torch.manual_seed(0)
    nets = [torch.nn.Conv2d(1, 1, 3, padding=1) for _ in range(2)]
    paths = []
    for k, net in enumerate(nets):
        paths.append(tmp_path / f"m{k}.pt")
        torch.save(net.state_dict(), paths[-1])
    x = torch.rand(2, 1, 12, 10)
    single = AveragedProbabilities(torch.nn.Conv2d(1, 1, 3, padding=1), paths[:1])
    torch.testing.assert_close(single(x), nets[0](x))
    both = AveragedProbabilities(torch.nn.Conv2d(1, 1, 3, padding=1), paths, flip_tta=True)
    expected = sum(
        torch.sigmoid(net(x)) + torch.flip(torch.sigmoid(net(torch.flip(x, dims=(2,)))), dims=(2,)) for net in nets
    ) / 4
    torch.testing.assert_close(torch.sigmoid(both(x)), expected, atol=1e-5, rtol=1e-5)


def test_tta_false_from_the_command_line_runs_and_logs_without_tta(tmp_path, caplog):
    """``--tta false`` arrives as the string "false": no flipped pass, and the log says TTA is off."""
    net = torch.nn.Conv2d(1, 1, 3, padding=1)
    torch.save(net.state_dict(), tmp_path / "m.pt")
    with caplog.at_level("INFO", logger="scripts.inference.ensemble"):
        plain = AveragedProbabilities(torch.nn.Conv2d(1, 1, 3, padding=1), [tmp_path / "m.pt"], flip_tta="false")
    assert plain.flip_tta is False and "flip TTA off" in caplog.text and "flip TTA on" not in caplog.text
    x = torch.rand(1, 1, 12, 10)
    torch.testing.assert_close(plain(x), net(x))  # the network's own logits: no averaging with a flipped pass
    assert AveragedProbabilities(torch.nn.Conv2d(1, 1, 3, padding=1), [tmp_path / "m.pt"], flip_tta="true").flip_tta is True


def test_weights_load_only_as_plain_state_dicts(tmp_path):
    torch.save({"weight": BrightnessNet()}, tmp_path / "evil.pt")  # a pickled module, not tensors
    with pytest.raises(ValueError, match="evil.pt.*weights_only"):
        load_weights(torch.nn.Conv2d(1, 1, 1), tmp_path / "evil.pt")
    with pytest.raises(FileNotFoundError, match="no weights at"):
        load_weights(torch.nn.Conv2d(1, 1, 1), tmp_path / "missing.pt")
    torch.save(torch.nn.Conv2d(1, 2, 1).state_dict(), tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt: weights of another network than network_config"):
        load_weights(torch.nn.Conv2d(1, 1, 1), tmp_path / "other.pt")


def test_inference_builds_the_network_that_training_saves():
    def merged(*names):
        parser = ConfigParser()
        parser.read_config([str(REPO / "configs" / name) for name in names])
        return parser

    train, infer = merged("common.json", "train.json"), merged("common.json", "inference.json")
    assert infer["network_config"] == train["network_config"]
    for name in ("train.json", "inference.json"):  # written once, in common.json
        assert "network_config" not in json.loads((REPO / "configs" / name).read_text())
    demo = merged("common.json", "train.json", "demo.json", "demo_train.json")
    demo_infer = merged("common.json", "inference.json", "demo.json", "demo_inference.json")
    assert demo_infer["network_config"] == demo["network_config"] and demo["network_config"]["channels"] == [8, 16, 32, 64, 128]
    assert demo_infer["roi_size"] == demo["crop_size"]


def test_a_second_file_with_the_same_sop_instance_uid_is_an_error_not_a_second_row(tmp_path):
    from types import SimpleNamespace

    from monai.data import MetaTensor

    from scripts.inference.writer import InferenceWriter

    writer = InferenceWriter(tmp_path, seg=False)

    def item(path):
        meta = {"filename_or_obj": path, "SOPInstanceUID": "1.2.3", "Rows": 4, "Columns": 6}
        return {"image": MetaTensor(torch.zeros(1, 6, 4), meta=meta), "pred": torch.zeros(1, 6, 4), "image_prob": 0.1}

    writer(SimpleNamespace(state=SimpleNamespace(output=[item("a.dcm")])))
    writer(SimpleNamespace(state=SimpleNamespace(output=[item("b.dcm")])))
    summary = writer.finish()
    assert summary["processed"] == 1 and summary["failed"] == 1
    assert (tmp_path / "submission.csv").read_text().splitlines() == ["ImageId,EncodedPixels", "1.2.3,-1"]
    assert (tmp_path / "predictions.csv").read_text().splitlines()[1] == "1.2.3,0.100000,0,no"
    errors = (tmp_path / "errors.csv").read_text()
    assert "b.dcm" in errors and "already came from a.dcm" in errors


def test_writing_in_the_engine_thread_gives_the_same_files_as_the_writer_processes(inference_run, mixed_folder, brightness_weights, tmp_path):
    summary = json.loads((inference_run["out"] / "summary.json").read_text())
    _run_inference(mixed_folder["root"], tmp_path, brightness_weights, "--write_overlays", "true", "--write_workers", "0")
    pooled = inference_run["out"]
    assert (tmp_path / "submission.csv").read_text() == (pooled / "submission.csv").read_text()
    assert (tmp_path / "errors.csv").read_text() == (pooled / "errors.csv").read_text()
    for folder in ("masks", "overlays"):
        names = sorted(p.name for p in (pooled / folder).iterdir())
        assert names == sorted(p.name for p in (tmp_path / folder).iterdir()) and names
        for name in names:
            assert np.array_equal(np.asarray(Image.open(pooled / folder / name)), np.asarray(Image.open(tmp_path / folder / name)))
    assert summary["processed"] == json.loads((tmp_path / "summary.json").read_text())["processed"]


def test_a_post_processing_without_an_image_probability_leaves_the_column_blank_and_loses_nothing(tmp_path):
    from types import SimpleNamespace

    from scripts.inference.writer import InferenceWriter

    items, _ = _writer_items(tmp_path / "in")
    for item in items:
        del item["image_prob"]
    writer = InferenceWriter(tmp_path / "out", seg=False)
    writer(SimpleNamespace(state=SimpleNamespace(output=items)))
    summary = writer.finish()
    assert summary["processed"] == 3 and summary["errors"] == 0 and summary["probability"].startswith("none")
    rows = list(csv.reader((tmp_path / "out" / "predictions.csv").read_text().splitlines()[1:]))
    assert [probability for _, probability, _, _ in rows] == ["", "", ""] and all(positive == "yes" for *_, positive in rows)


def _writer_items(tmp_path, n=3):
    from monai.data import MetaTensor

    _, mask = asymmetric_case()
    items = []
    for i in range(n):
        uid = f"1.2.826.0.1.3680043.8.498.7{i}"
        path = write_test_dicom(tmp_path / f"source{i}.dcm", mask.astype(np.uint8) * 200, sop_instance_uid=uid, jpeg_quality=None)
        meta = {"filename_or_obj": str(path), "SOPInstanceUID": uid, "Rows": mask.shape[0], "Columns": mask.shape[1]}
        pred = torch.from_numpy(mask.T[None].astype(np.float32))
        items.append({"image": MetaTensor(pred.clone(), meta=meta), "pred": pred, "image_prob": 0.9})
    return items, mask


@pytest.mark.parametrize("workers", [0, 2])
def test_a_failing_seg_is_an_error_of_its_own_and_the_image_keeps_its_row_and_mask(tmp_path, workers):
    from types import SimpleNamespace

    from scripts.inference.writer import InferenceWriter

    items, mask = _writer_items(tmp_path / "in")
    for item in items:  # the SEG reads its source's header when it is written: gone, so every SEG fails
        Path(item["image"].meta["filename_or_obj"]).unlink()
    out = tmp_path / "out"
    writer = InferenceWriter(out, workers=workers)
    writer(SimpleNamespace(state=SimpleNamespace(output=items)))
    summary = writer.finish()
    assert summary["processed"] == 3 and summary["failed"] == 0 and summary["errors"] == 3
    rows = list(csv.reader((out / "submission.csv").read_text().splitlines()[1:]))
    assert [image_id for image_id, _ in rows] == [item["image"].meta["SOPInstanceUID"] for item in items]  # input order
    assert all(rle.decode(encoded, mask.shape).tolist() == mask.tolist() for _, encoded in rows)
    assert len(list((out / "masks").iterdir())) == 3
    assert (out / "errors.csv").read_text().count("DICOM SEG not written") == 3


@pytest.mark.parametrize("workers", [0, 2])
def test_a_mask_that_cannot_be_written_loses_only_that_image(tmp_path, workers, monkeypatch):
    from types import SimpleNamespace

    from scripts.inference import outputs
    from scripts.inference.writer import InferenceWriter

    items, _ = _writer_items(tmp_path / "in")
    out = tmp_path / "out"
    doomed = safe_name(items[1]["image"].meta["SOPInstanceUID"])
    real_save_png = outputs.save_png

    def full_disk_for_one(path, pixels):
        if path.stem == doomed:
            raise OSError(28, "No space left on device")
        real_save_png(path, pixels)

    monkeypatch.setattr(outputs, "save_png", full_disk_for_one)  # before the writer processes fork
    writer = InferenceWriter(out, workers=workers)
    for item in items:
        writer(SimpleNamespace(state=SimpleNamespace(output=[item])))
    summary = writer.finish()
    assert summary["processed"] == 2 and summary["failed"] == 1
    errors = (out / "errors.csv").read_text()
    assert "source1.dcm" in errors and "source0.dcm" not in errors and "No space left on device" in errors
    assert len(list((out / "seg").iterdir())) == 2


def test_an_engine_error_stops_the_writers_and_is_raised_not_written_up(tmp_path):
    from ignite.engine import Engine

    from scripts.inference.writer import InferenceWriter

    items, _ = _writer_items(tmp_path / "in", n=3)

    def step(engine, index):
        if index == 2:
            raise RuntimeError("the GPU fell over")
        return [items[index]]

    engine = Engine(step)
    InferenceWriter(tmp_path / "out", workers=2).attach(engine)
    with pytest.raises(RuntimeError, match="the GPU fell over"):
        engine.run(list(range(3)))
    assert not (tmp_path / "out" / "submission.csv").exists() and not (tmp_path / "out" / "summary.json").exists()


_PARENT = os.getpid()


def _dies_in_a_writer_process(*job):
    from scripts.inference import writer as inference_writer

    if os.getpid() != _PARENT and job[1].endswith("2"):
        os._exit(1)  # a killed writer (out of memory, a crash in C code)
    return inference_writer.__dict__["_real_write_image_files"](*job)


def test_a_writer_process_that_dies_costs_no_image(tmp_path, monkeypatch, caplog):
    from types import SimpleNamespace

    from scripts.inference import writer as inference_writer

    monkeypatch.setattr(inference_writer, "_real_write_image_files", inference_writer.write_image_files, raising=False)
    monkeypatch.setattr(inference_writer, "write_image_files", _dies_in_a_writer_process)
    items, mask = _writer_items(tmp_path / "in", n=5)
    writer = inference_writer.InferenceWriter(tmp_path / "out", workers=2)
    for item in items:
        writer(SimpleNamespace(state=SimpleNamespace(output=[item])))
    summary = writer.finish()
    assert summary["processed"] == 5 and summary["errors"] == 0
    assert len(list((tmp_path / "out" / "masks").iterdir())) == len(list((tmp_path / "out" / "seg").iterdir())) == 5
    assert "a writer process died" in caplog.text
    assert not list((tmp_path / "out").rglob("*.tmp"))


def test_images_in_flight_to_the_writers_stay_bounded(tmp_path):
    from types import SimpleNamespace

    from scripts.inference.writer import InferenceWriter

    items, _ = _writer_items(tmp_path / "in", n=8)
    writer = InferenceWriter(tmp_path / "out", workers=1)
    for item in items:
        writer(SimpleNamespace(state=SimpleNamespace(output=[item])))
        assert writer.pool.in_flight() <= 4
    assert writer.finish()["processed"] == 8


def test_the_writer_pool_bounds_its_backlog_and_returns_results_in_order_whoever_calls_it(tmp_path):
    from scripts.inference.writer_pool import WriterPool

    pool = WriterPool(abs, workers=2, backlog=4)
    pool.start()
    returned = []
    for i in range(20):
        returned += pool.submit(i, (-i,))  # results handed back by submit itself, not by a lazy generator
        assert pool.in_flight() <= 8
    returned += list(pool.drain())
    pool.close()
    assert returned == [(i, i) for i in range(20)]


def test_each_run_in_a_process_ends_its_loader_and_writer_processes(mixed_folder, brightness_weights, tmp_path):
    """A service runs inference again and again in one process (the DICOMweb command, the viewer, MONAI Label, the
    benchmark): each run ends its loader and writer processes itself. Ignite stops after the last image without
    ending the loader, whose idle workers then lived on until the garbage collector met them and PyTorch's clean-up
    waited 5 s for each, in the middle of a later run."""
    import multiprocessing

    from scripts.benchmark.common import config_files as bundle_configs

    before = set(multiprocessing.active_children())
    for run in range(2):
        workflow = ConfigWorkflow(
            config_file=[*bundle_configs("inference.json"), BRIGHTNESS], meta_file=str(REPO / "configs" / "metadata.json"),
            workflow_type="infer", bundle_root=str(REPO), dataset_dir=str(mixed_folder["root"]),
            output_dir=str(tmp_path / f"run{run}"), ckpt_dir=str(brightness_weights), num_workers=2, write_workers=1,
        )  # fmt: skip
        workflow.initialize()
        workflow.run()
        assert set(multiprocessing.active_children()) <= before, f"run {run} left processes behind"
        workflow.finalize()
        summary = json.loads((tmp_path / f"run{run}" / "summary.json").read_text())
        assert summary["processed"] == len(mixed_folder["truth"])
        assert summary["failed"] + summary["skipped_by_rules"] == len(mixed_folder["bad"])
