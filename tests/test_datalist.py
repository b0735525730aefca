"""Specification of the datalist builder (scripts/siim/datalist.py)."""

import json
from pathlib import Path

import numpy as np
import pytest

from scripts.siim.datalist import build_datalist, find_siim_csv, load_fold, main, read_datalist, split_fold
from scripts.siim.rle_csv import write_rle_csv
from tests.helpers import write_test_dicom

PIXELS = np.full((8, 6), 100, dtype=np.uint8)


def make_siim_folder(root, positives: int, negatives: int, extra_dicoms=(), extra_rows=()):
    """A SIIM-layout folder: one study/series per image, a stage-1 CSV."""
    rows = []
    ids = [f"1.2.3.4.{i}" for i in range(positives + negatives)] + list(extra_dicoms)
    for i, image_id in enumerate(ids):
        path = root / "dicom-images-train" / f"1.2.3.2.{i}" / f"1.2.3.3.{i}" / f"{image_id}.dcm"
        write_test_dicom(path, PIXELS, sop_instance_uid=image_id, jpeg_quality=None)
    for i, image_id in enumerate(ids[: positives + negatives]):
        rows += [(image_id, "1 2"), (image_id, "5 1")] if i < positives else [(image_id, "-1")]
    rows += [(image_id, "-1") for image_id in extra_rows]
    write_rle_csv(root / "train-rle.csv", rows, style="stage1")
    return root


def test_items_carry_path_annotations_and_fold(tmp_path):
    make_siim_folder(tmp_path, positives=1, negatives=1)
    items, report = build_datalist(tmp_path, n_folds=2)
    by_id = {item["image_id"]: item for item in items}
    assert by_id["1.2.3.4.0"]["label"] == ["1 2", "5 1"] and by_id["1.2.3.4.0"]["positive"] is True
    assert by_id["1.2.3.4.1"]["label"] == [] and by_id["1.2.3.4.1"]["positive"] is False
    assert by_id["1.2.3.4.0"]["image"].endswith("dicom-images-train/1.2.3.2.0/1.2.3.3.0/1.2.3.4.0.dcm")
    assert {item["fold"] for item in items} == {0, 1}
    assert report.lines() == []


def test_folds_are_stratified_by_positive_and_negative(tmp_path):
    make_siim_folder(tmp_path, positives=10, negatives=25)
    items, _ = build_datalist(tmp_path, n_folds=5)
    for fold in range(5):
        in_fold = [item for item in items if item["fold"] == fold]
        assert sum(item["positive"] for item in in_fold) == 2
        assert len(in_fold) == 7


def test_folds_are_deterministic_for_a_seed_and_change_with_it(tmp_path):
    make_siim_folder(tmp_path, positives=10, negatives=30)
    first, _ = build_datalist(tmp_path, seed=3)
    again, _ = build_datalist(tmp_path, seed=3)
    other, _ = build_datalist(tmp_path, seed=4)
    assert first == again
    assert [i["fold"] for i in first] != [i["fold"] for i in other]


def test_unmatched_dicoms_and_rows_are_reported_not_silently_dropped(tmp_path, caplog):
    make_siim_folder(tmp_path, positives=1, negatives=1, extra_dicoms=["9.9.9"], extra_rows=["8.8.8"])
    items, report = build_datalist(tmp_path, n_folds=2)
    assert {item["image_id"] for item in items} == {"1.2.3.4.0", "1.2.3.4.1"}
    assert len(report.dicoms_without_rows) == 1 and report.dicoms_without_rows[0].endswith("9.9.9.dcm")
    assert report.rows_without_dicoms == ["8.8.8"]
    assert any("9.9.9.dcm" in record.message for record in caplog.records)
    assert any("8.8.8" in record.message for record in caplog.records)


def test_duplicate_dicom_for_one_image_id_is_reported(tmp_path):
    make_siim_folder(tmp_path, positives=1, negatives=1)
    copy = tmp_path / "dicom-images-train" / "copy" / "1.2.3.4.0.dcm"
    write_test_dicom(copy, PIXELS, sop_instance_uid="1.2.3.4.0", jpeg_quality=None)
    _, report = build_datalist(tmp_path, n_folds=2)
    assert len(report.duplicate_dicoms) == 1 and "1.2.3.4.0" in report.duplicate_dicoms[0]


def test_a_dicom_is_matched_by_its_sop_instance_uid_not_its_file_name(tmp_path):
    make_siim_folder(tmp_path, positives=1, negatives=0)
    renamed = tmp_path / "dicom-images-train" / "other" / "IM0001.dcm"
    write_test_dicom(renamed, PIXELS, sop_instance_uid="1.2.3.4.7", jpeg_quality=None)
    with open(tmp_path / "train-rle.csv", "a") as handle:
        handle.write("1.2.3.4.7, -1\n")
    items, report = build_datalist(tmp_path, n_folds=2)
    by_id = {item["image_id"]: item["image"] for item in items}
    assert by_id["1.2.3.4.7"] == str(renamed) and report.lines() == []


def test_csv_problems_are_carried_into_the_report(tmp_path):
    make_siim_folder(tmp_path, positives=1, negatives=1)
    with open(tmp_path / "train-rle.csv", "a") as handle:
        handle.write("1.2.3.4.1, 3 x\n")
    _, report = build_datalist(tmp_path, n_folds=2)
    assert len(report.csv_problems) == 1 and "non-integer" in report.csv_problems[0]


def test_csv_is_found_under_either_challenge_name(tmp_path):
    make_siim_folder(tmp_path, positives=1, negatives=1)
    (tmp_path / "train-rle.csv").rename(tmp_path / "stage_2_train.csv")
    assert find_siim_csv(tmp_path).name == "stage_2_train.csv"
    (tmp_path / "stage_2_train.csv").unlink()
    with pytest.raises(FileNotFoundError, match="no annotation CSV"):
        find_siim_csv(tmp_path)


def test_missing_image_folder_is_a_clear_error(tmp_path):
    write_rle_csv(tmp_path / "train-rle.csv", [("1.2", "-1")])
    with pytest.raises(FileNotFoundError, match="dicom-images-train"):
        build_datalist(tmp_path)


def test_split_fold_separates_validation_from_training(tmp_path):
    make_siim_folder(tmp_path, positives=4, negatives=6)
    split = load_fold(tmp_path, fold=1, n_folds=5)
    assert {item["fold"] for item in split["validation"]} == {1}
    assert 1 not in {item["fold"] for item in split["training"]}
    assert len(split["training"]) + len(split["validation"]) == 10


def test_split_fold_rejects_an_empty_fold():
    with pytest.raises(ValueError, match="fold 3"):
        split_fold([{"fold": 0}, {"fold": 1}], fold=3)


def test_command_line_writes_a_datalist_json(tmp_path, capsys):
    data = make_siim_folder(tmp_path / "siim", positives=2, negatives=3, extra_rows=["8.8.8"])
    assert main(["--data_dir", str(data), "--out", str(tmp_path / "datalist.json"), "--n_folds", "2"]) == 0
    written = json.loads((tmp_path / "datalist.json").read_text())
    assert len(written["items"]) == 5 and written["n_folds"] == 2
    assert any("8.8.8" in line for line in written["report"])
    captured = capsys.readouterr()
    assert "5 images (2 positive)" in captured.out and "8.8.8" in captured.err


def test_training_from_the_datalist_file_gets_the_folds_the_folder_gives(tmp_path, monkeypatch):
    data = make_siim_folder(tmp_path / "siim", positives=4, negatives=6)
    main(["--data_dir", str(data), "--out", str(tmp_path / "lists" / "datalist.json"), "--n_folds", "3", "--seed", "2"])
    monkeypatch.chdir(tmp_path / "siim")  # paths in the file are relative to the file, not to where training runs
    from_file = load_fold(None, fold=1, datalist_file=tmp_path / "lists" / "datalist.json")
    from_folder = load_fold(data, fold=1, n_folds=3, seed=2)
    for key in ("training", "validation"):
        assert [i["image_id"] for i in from_file[key]] == [i["image_id"] for i in from_folder[key]]
        assert [Path(i["image"]).resolve() for i in from_file[key]] == [Path(i["image"]).resolve() for i in from_folder[key]]
        assert all(Path(i["image"]).is_file() for i in from_file[key])


def test_a_datalist_file_and_a_contradicting_split_are_refused(tmp_path):
    data = make_siim_folder(tmp_path / "siim", positives=2, negatives=2)
    main(["--data_dir", str(data), "--out", str(tmp_path / "datalist.json"), "--n_folds", "2"])
    with pytest.raises(ValueError, match="made with n_folds=2, the config asks n_folds=5"):
        load_fold(data, fold=0, n_folds=5, datalist_file=tmp_path / "datalist.json")
    assert load_fold(data, fold=0, n_folds=2, seed=0, datalist_file=tmp_path / "datalist.json")["validation"]


def test_a_decathlon_style_datalist_is_read_as_monai_reads_it(tmp_path):
    (tmp_path / "list.json").write_text(
        json.dumps(
            {
                "training": [{"image": "imgs/a.dcm", "label": ["1 2"]}, {"image": "/abs/b.dcm", "label": "labels/b.nii.gz"}],
                "validation": [{"image": "imgs/c.dcm", "label": ["-1"]}],
            }
        )
    )
    lists = load_fold(None, datalist_file=tmp_path / "list.json")
    a, b = lists["training"]
    assert a["image"] == str(tmp_path / "imgs" / "a.dcm") and a["label"] == ["1 2"] and a["positive"] is True
    assert b["image"] == "/abs/b.dcm" and b["label"] == str(tmp_path / "labels" / "b.nii.gz") and "positive" not in b
    assert lists["validation"][0]["positive"] is False


def test_a_file_that_is_not_a_datalist_is_named_in_the_error(tmp_path):
    (tmp_path / "other.json").write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match="other.json: a datalist has"):
        read_datalist(tmp_path / "other.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="broken.json: cannot read the datalist"):
        read_datalist(tmp_path / "broken.json")


def test_a_decathlon_label_given_as_one_rle_string_stays_an_rle_string(tmp_path):
    (tmp_path / "list.json").write_text(
        json.dumps({"training": [{"image": "a.dcm", "label": "175349 7 1013 12"}], "validation": []})
    )
    (item,) = load_fold(None, datalist_file=tmp_path / "list.json")["training"]
    assert item["label"] == "175349 7 1013 12" and item["positive"] is True


def test_a_decathlon_list_without_validation_is_split_by_its_folds(tmp_path):
    items = [{"image": f"{i}.dcm", "label": ["-1"], "fold": i % 2} for i in range(4)]
    (tmp_path / "list.json").write_text(json.dumps({"training": items}))
    lists = load_fold(None, fold=1, datalist_file=tmp_path / "list.json")
    assert [Path(i["image"]).name for i in lists["validation"]] == ["1.dcm", "3.dcm"]
    (tmp_path / "nofold.json").write_text(json.dumps({"training": [{"image": "a.dcm", "label": ["-1"]}]}))
    with pytest.raises(ValueError, match="nofold.json: no 'validation' list"):
        load_fold(None, datalist_file=tmp_path / "nofold.json")


def test_a_datalist_written_before_paths_were_relative_to_the_file_keeps_its_paths(tmp_path):
    """Version 0.2 wrote paths as given on its command line (relative to where it ran)."""
    (tmp_path / "lists").mkdir()
    old = {"n_folds": 2, "seed": 0, "items": [{"image": "siim/a.dcm", "label": [], "positive": False, "fold": 0}]}
    (tmp_path / "lists" / "datalist.json").write_text(json.dumps(old))
    assert read_datalist(tmp_path / "lists" / "datalist.json")["items"][0]["image"] == "siim/a.dcm"


def test_dicom_files_with_upper_case_or_dicom_extensions_are_found(tmp_path):
    make_siim_folder(tmp_path, positives=1, negatives=0)
    write_test_dicom(tmp_path / "dicom-images-train" / "x" / "A.DCM", PIXELS, sop_instance_uid="1.2.3.4.8", jpeg_quality=None)
    write_test_dicom(tmp_path / "dicom-images-train" / "x" / "b.dicom", PIXELS, sop_instance_uid="1.2.3.4.9", jpeg_quality=None)
    (tmp_path / "dicom-images-train" / "x" / "notes.txt").write_text("not an image")
    with open(tmp_path / "train-rle.csv", "a") as handle:
        handle.write("1.2.3.4.8, -1\n1.2.3.4.9, -1\n")
    items, report = build_datalist(tmp_path, n_folds=2)
    assert {item["image_id"] for item in items} == {"1.2.3.4.0", "1.2.3.4.8", "1.2.3.4.9"} and report.lines() == []
