"""The image-level classifier (issue 15): its bundle config, PNG radiographs, the NIH ChestX-ray14 layout, and its
use as the gate of inference."""

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from scripts.data.png_reader import LoadChestImaged, png_problem, read_png
from scripts.evaluation.metrics import ImageClassMetric
from scripts.inference.gating import GatedInferer, ImageClassifiers
from scripts.networks.definition import build_network
from scripts.nih.datalist import build_nih_datalist, read_data_entry
from scripts.synthetic.nih import HEADER, generate_nih
from scripts.training.checkpoints import save_model
from tests.conftest import COMMON, REPO, config_files, run_bundle

CLASSIFIER = ["configs/train.json", "configs/classifier.json"]
TINY_CLASSIFIER = {"target": "DenseNet121", "spatial_dims": 2, "in_channels": 1, "out_channels": 1,
                   "init_features": 4, "growth_rate": 4, "block_config": [2, 2]}  # fmt: skip


@pytest.fixture(scope="module")
def nih(tmp_path_factory):
    folder = tmp_path_factory.mktemp("nih")
    rows = generate_nih(folder, n=40, seed=1, size=64, positive_share=0.4, lesion_contrast=25, lesion_scale=3)
    return folder, rows


def test_the_synthetic_nih_set_has_the_layout_and_the_header_nih_ships(nih):
    folder, rows = nih
    assert (folder / "Data_Entry_2017.csv").read_text().splitlines()[0] == HEADER
    assert len(list((folder / "images").glob("*.png"))) == len(rows) == 40
    names = [row[0] for row in rows]
    assert all(len(name) == len("00000001_000.png") for name in names)
    train = (folder / "train_val_list.txt").read_text().split()
    test = (folder / "test_list.txt").read_text().split()
    assert sorted(train + test) == sorted(names) and not set(train) & set(test)
    patient = {row[0]: row[3] for row in rows}
    assert not {patient[name] for name in train} & {patient[name] for name in test}  # patient-disjoint


def test_the_nih_datalist_marks_pneumothorax_among_the_findings_and_keeps_patients_in_one_fold(nih, tmp_path):
    folder, rows = nih
    training, test, report = build_nih_datalist(folder, n_folds=3, seed=0)
    entries = read_data_entry(folder / "Data_Entry_2017.csv")
    assert len(training) + len(test) == 40 and not report.lines()
    for item in training + test:
        findings, _ = entries[item["image_id"]]
        assert item["positive"] == ("Pneumothorax" in findings)
    folds_of_patient = {}
    for item in training:
        folds_of_patient.setdefault(item["patient"], set()).add(item["fold"])
    assert all(len(folds) == 1 for folds in folds_of_patient.values())
    assert {item["image_id"] for item in test} == set((folder / "test_list.txt").read_text().split())
    # a row whose PNG is missing is left out and reported, not fatal
    (tmp_path / "images").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "images" / "00000001_000.png")
    (tmp_path / "Data_Entry_2017.csv").write_text(HEADER + "\n00000001_000.png,Pneumothorax|Mass,0,1,50,M,PA\n"
                                                 "00000002_000.png,No Finding,0,2,50,M,PA\n")  # fmt: skip
    training, test, report = build_nih_datalist(tmp_path)
    assert [item["positive"] for item in training] == [True] and training[0]["findings"] == "Mass|Pneumothorax"
    assert report.lines() == ["CSV row without a PNG (left out): 00000002_000.png"]


def test_a_data_entry_file_without_its_columns_is_refused_by_name(tmp_path):
    (tmp_path / "Data_Entry_2017.csv").write_text("Image,Labels\nx.png,Mass\n")
    with pytest.raises(ValueError, match=r"Data_Entry_2017.csv: no column Image Index, Finding Labels, Patient ID"):
        read_data_entry(tmp_path / "Data_Entry_2017.csv")


def test_png_radiographs_load_as_the_dicom_reader_lays_them_out_whatever_their_mode(tmp_path):
    pixels = np.arange(6 * 10, dtype=np.uint8).reshape(6, 10) * 4
    Image.fromarray(pixels).save(tmp_path / "grey.png")
    Image.fromarray(pixels).convert("RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(pixels.astype(np.uint16) * 200).save(tmp_path / "deep.png")
    grey, rgba, deep = (read_png(tmp_path / f"{name}.png") for name in ("grey", "rgba", "deep"))
    assert grey.shape == (10, 6) and np.array_equal(grey.numpy(), pixels.T)  # (cols, rows), as MONAI loads DICOM
    assert np.array_equal(rgba.numpy(), pixels.T) and grey.meta["BitsStored"] == 8
    assert deep.meta["BitsStored"] == 16 and np.array_equal(deep.numpy(), pixels.T.astype(np.uint16) * 200)
    assert (grey.meta["Rows"], grey.meta["Columns"], grey.meta["SOPInstanceUID"]) == (6, 10, "grey")
    assert LoadChestImaged("image")({"image": str(tmp_path / "grey.png")})["image"].shape == (10, 6)


def test_a_truncated_or_oversized_png_is_refused_naming_the_file_before_decoding(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50), dtype=np.uint8)).save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[:20])
    (tmp_path / "body.png").write_bytes(data[: len(data) // 2])
    assert png_problem(tmp_path / "ok.png") is None
    assert png_problem(tmp_path / "cut.png") == "truncated PNG (no complete IHDR header)"
    assert "more than max_image_pixels (1000)" in png_problem(tmp_path / "ok.png", max_pixels=1000)
    with pytest.raises(ValueError, match=r"body.png: PNG pixel data cannot be decoded"):
        read_png(tmp_path / "body.png")


def test_image_level_sensitivity_and_specificity_count_images_at_the_threshold():
    probs = torch.tensor([[0.9], [0.4], [0.6], [0.1], [0.5]])
    labels = torch.tensor([[1.0], [1.0], [0.0], [0.0], [0.0]])
    for score, expected in (("sensitivity", 0.5), ("specificity", 1 / 3)):
        metric = ImageClassMetric(score, threshold=0.5)
        metric(y_pred=probs, y=labels)
        assert float(metric.aggregate()) == pytest.approx(expected)


def test_the_classifier_is_a_complete_model_zoo_training_workflow(tiny_siim, tmp_path):
    from monai.bundle import ConfigWorkflow

    workflow = ConfigWorkflow(
        config_file=[str(REPO / COMMON), *[str(REPO / name) for name in CLASSIFIER]],
        meta_file=str(REPO / "configs" / "metadata.json"), workflow_type="train", dataset_dir=str(tiny_siim),
        output_dir=str(tmp_path / "train"), ckpt_dir=str(tmp_path / "models"), image_size=[64, 64], num_workers=0,
    )  # fmt: skip
    workflow.initialize()
    assert workflow.check_properties() in (None, [])


def _saved_classifier(path, bias: float):
    torch.manual_seed(0)
    network = build_network(TINY_CLASSIFIER)
    torch.nn.init.zeros_(network.class_layers.out.weight)
    torch.nn.init.constant_(network.class_layers.out.bias, bias)
    save_model(network, path, {"metric": "val_auc", "score": 1.0, "epoch": 1}, image_size=[32, 32])
    return path


def test_the_gate_is_the_mean_of_the_classifiers_and_the_segmenters_head(tmp_path):
    classifiers = ImageClassifiers([_saved_classifier(tmp_path / "a.pt", 2.0), _saved_classifier(tmp_path / "b.pt", -1.0)])
    images = torch.rand(2, 1, 80, 60)
    expected = (torch.sigmoid(torch.tensor(2.0)) + torch.sigmoid(torch.tensor(-1.0))) / 2
    torch.testing.assert_close(classifiers(images), torch.full((2, 1), float(expected)))

    def segmenter_with_head(x):  # mask logits 0, image probability 0.9
        return torch.cat([torch.zeros_like(x), torch.full_like(x, float(torch.logit(torch.tensor(0.9))))], dim=1)

    out = GatedInferer(lambda x, network: network(x), classifiers)(images, segmenter_with_head)
    assert out.shape == (2, 2, 80, 60)
    torch.testing.assert_close(torch.sigmoid(out[:, 1]), torch.full((2, 80, 60), float((2 * expected + 0.9) / 3)))
    plain = GatedInferer(lambda x, network: network(x), classifiers)(images, lambda x: torch.zeros_like(x))
    torch.testing.assert_close(torch.sigmoid(plain[:, 1]), torch.full((2, 80, 60), float(expected)))


def test_a_gate_checkpoint_without_a_classifiers_record_is_refused_by_name(tmp_path):
    torch.save(build_network(TINY_CLASSIFIER).state_dict(), tmp_path / "bare.pt")
    with pytest.raises(ValueError, match=r"gate checkpoint .*bare.pt: its record \(bare.json\) gives no network and image_size"):
        ImageClassifiers([tmp_path / "bare.pt"])


@pytest.mark.slow
def test_a_classifier_trained_on_nih_pngs_evaluates_on_the_test_list_and_gates_inference_on_siim_dicoms(nih, tiny_siim, tmp_path):
    folder, _ = nih
    lists = tmp_path / "lists"
    from scripts.nih.datalist import main

    assert main(["--data_dir", str(folder), "--out_dir", str(lists), "--n_folds", "3"]) == 0
    small = ["--network_config", json.dumps(TINY_CLASSIFIER), "--image_size", "[64,64]", "--batch_size", "4",
             "--num_workers", "0", "--max_epochs", "2", "--epoch_samples", "16", "--warmup_epochs", "1"]  # fmt: skip
    models = tmp_path / "classifier"
    run_bundle(["run", "--config_file", config_files(COMMON, *CLASSIFIER), "--meta_file", "configs/metadata.json",
                "--datalist_file", str(lists / "datalist.json"), "--output_dir", str(tmp_path / "train"),
                "--ckpt_dir", str(models), *small])  # fmt: skip
    record = json.loads((models / "model.json").read_text())
    assert record["metric"] == "val_auc" and record["image_size"] == [64, 64] and record["network"]["target"] == "DenseNet121"
    run_bundle(["run", "--config_file", config_files(COMMON, *CLASSIFIER, "configs/classifier_evaluate.json"),
                "--meta_file", "configs/metadata.json", "--datalist_file", str(lists / "test.json"),
                "--output_dir", str(tmp_path / "eval"), "--ckpt_dir", str(models), "--num_workers", "0"])  # fmt: skip
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["images"] == len((folder / "test_list.txt").read_text().split())
    assert 0.0 <= metrics["metrics"]["val_auc"] <= 1.0 and set(metrics["metrics"]) == {"val_auc", "val_sensitivity", "val_specificity"}
    # the NIH-trained classifier gates the segmenter (here the stand-in "bright = positive" network) on DICOMs
    weights = tmp_path / "segmenter"
    weights.mkdir()
    from tests.helpers import BrightnessNet

    torch.save(BrightnessNet().state_dict(), weights / "model.pt")

    def infer(out, threshold):
        run_bundle(["run", "--config_file", config_files(COMMON, "configs/inference.json", "tests/configs/inference_brightness.json"),
                    "--meta_file", "configs/metadata.json", "--dataset_dir", str(tiny_siim / "dicom-images-test"),
                    "--output_dir", str(out), "--ckpt_dir", str(weights), "--gate_checkpoints", json.dumps([str(models / "model.pt")]),
                    "--gate_threshold", threshold])  # fmt: skip
        return list(csv.reader((out / "predictions.csv").read_text().splitlines()[1:]))

    kept, emptied = infer(tmp_path / "kept", "0.0"), infer(tmp_path / "emptied", "1.0")
    assert len(kept) == len(list((tiny_siim / "dicom-images-test").rglob("*.dcm"))) and kept
    assert any(positive == "yes" for *_, positive in kept)  # gate 0: the bright = positive masks stay
    assert all(area == "0" and positive == "no" for _, _, area, positive in emptied)  # gate 1: every mask emptied
    assert [row[:2] for row in kept] == [row[:2] for row in emptied]  # the same classifier probabilities
    assert all(0.0 <= float(probability) < 1.0 for _, probability, _, _ in kept)
    summary = json.loads((tmp_path / "kept" / "summary.json").read_text())
    assert summary["probability"] == "the image gate's" and summary["gate_checkpoints"] == [str(models / "model.pt")]


def test_the_datalist_check_takes_png_radiographs_only_for_the_classifier_and_still_reads_their_headers(tmp_path):
    from scripts.data.checks import check_datalist

    Image.fromarray(np.zeros((20, 30), np.uint8)).save(tmp_path / "good.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "good.png").read_bytes()[:16])
    items = {"training": [{"image": str(tmp_path / "good.png"), "positive": True}]}
    assert check_datalist(items, report=tmp_path / "bad.csv", png="true") == items
    with pytest.raises(ValueError, match="a PNG image, not DICOM"):
        check_datalist(items, report=tmp_path / "bad.csv")  # the segmenter's: DICOM only
    with pytest.raises(ValueError, match=r"truncated PNG"):
        check_datalist({"training": [{"image": str(tmp_path / "cut.png")}]}, report=tmp_path / "bad.csv", png=True)
