"""Hostile and broken input (issue 13): each case costs only itself, and says what it is in one line."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.transforms import Transform

from scripts.data.reader import LoadRadiographd, declared_size
from scripts.siim import rle
from tests.conftest import REPO, bundle_env
from tests.helpers import BrightnessNet, asymmetric_case, write_test_dicom
from tests.hostile import deflate_bomb, jpeg_bomb


def load(path, **kwargs):
    return LoadRadiographd("image", **kwargs)({"image": str(path)})["image"]


# ------------------------------------------------------------------------------------------ decompression bombs
def test_the_bomb_is_what_it_claims_a_few_kilobytes_declaring_3_6_gigapixels(tmp_path):
    import pydicom

    path = jpeg_bomb(tmp_path / "bomb.dcm")
    assert path.stat().st_size < 5000
    size = declared_size(pydicom.dcmread(path))
    assert size["frame_header"] == (60000, 60000) and (size["rows"], size["columns"]) == (60000, 60000)


BOMB_UNDER_A_MEMORY_LIMIT = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))  # 3 GiB of address space: the bomb wants 3.6 GB
from scripts.data.reader import LoadRadiographd
try:
    LoadRadiographd("image")({"image": sys.argv[1]})
except ValueError as error:
    print("REFUSED", error)
"""


@pytest.mark.parametrize("header", [(60000, 60000), (16, 16)], ids=["header-says-so", "only-the-jpeg-frame-says-so"])
def test_a_decompression_bomb_is_refused_before_decoding_under_a_small_memory_limit(tmp_path, header):
    path = jpeg_bomb(tmp_path / "bomb.dcm", header=header)
    result = subprocess.run(
        [sys.executable, "-c", BOMB_UNDER_A_MEMORY_LIMIT, str(path)],
        cwd=REPO, env=bundle_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith(f"REFUSED {path}: ") and "60000 x 60000" in result.stdout
    assert "max_image_pixels" in result.stdout or "header says" in result.stdout


def test_a_deflate_bomb_is_refused_before_inflating_under_a_small_memory_limit(tmp_path):
    """Deflated Explicit VR Little Endian is a legal transfer syntax; pydicom inflates the whole dataset at once."""
    path = deflate_bomb(tmp_path / "bomb.dcm", inflated_bytes=2 << 30)
    assert path.stat().st_size < 16 << 20
    result = subprocess.run(
        [sys.executable, "-c", BOMB_UNDER_A_MEMORY_LIMIT, str(path)],
        cwd=REPO, env=bundle_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith(f"REFUSED {path}: its deflated data inflates to more than ")


def test_a_small_deflated_radiograph_is_read(tmp_path):
    assert load(deflate_bomb(tmp_path / "small.dcm", inflated_bytes=1000)).shape == (16, 16)


def test_the_pixel_limit_is_configurable_and_a_normal_radiograph_passes(tmp_path):
    pixels, _ = asymmetric_case(300, 220)
    path = write_test_dicom(tmp_path / "ok.dcm", pixels, jpeg_quality=90)
    assert load(path).shape == (220, 300)
    with pytest.raises(ValueError, match=r"300 x 220 x 1 pixels, more than the limit of 10000"):
        load(path, max_pixels=10_000)


def test_a_jpeg_frame_of_another_size_than_the_header_is_refused(tmp_path):
    path = jpeg_bomb(tmp_path / "odd.dcm", frame=(32, 32), header=(16, 16))
    with pytest.raises(ValueError, match="compressed frame is 32 x 32 pixels, its header says 16 x 16"):
        load(path)


# ------------------------------------------------------------------------------- files that only look like DICOM
def _png(path):
    from PIL import Image

    Image.fromarray(np.zeros((8, 8), np.uint8)).save(path, format="PNG")
    return path


def _text(path):
    path.write_text("hello, I am not an image")
    return path


@pytest.mark.parametrize(
    "make,reason",
    [
        (lambda d: _png(d / "x.dcm"), "a PNG image, not DICOM"),
        (lambda d: (d / "empty.dcm").write_bytes(b"") or d / "empty.dcm", "empty file (0 bytes)"),
        (lambda d: (d / "dangling.dcm").symlink_to(d / "gone.dcm") or d / "dangling.dcm", "dangling symbolic link"),
        (lambda d: (d / "loop.dcm").symlink_to(d / "loop.dcm") or d / "loop.dcm", "symbolic link loop"),
        (lambda d: (d / "folder.dcm").mkdir() or d / "folder.dcm", "a folder, not a file"),
        (lambda d: _text(d / "text.dcm"), "not a DICOM file"),
    ],
    ids=["png", "empty", "dangling-link", "link-loop", "folder", "text"],
)
def test_what_is_not_a_dicom_radiograph_is_named_as_what_it_is(tmp_path, make, reason):
    path = make(tmp_path)
    with pytest.raises((ValueError, RuntimeError)) as raised:
        load(path)
    error = raised.value.__cause__ if isinstance(raised.value, RuntimeError) and raised.value.__cause__ else raised.value
    message = str(error)
    assert str(path) in message and reason in message
    assert "suitable reader" not in message


def _edited(path, **tags):
    """Rewrite the DICOM at ``path`` with ``tags`` set (None deletes; ``PixelData="twice"`` doubles it)."""
    import pydicom

    ds = pydicom.dcmread(path)
    with pydicom.config.disable_value_validation():
        for keyword, value in tags.items():
            if keyword == "TransferSyntaxUID":
                del ds.file_meta.TransferSyntaxUID
            elif keyword == "PixelData":
                ds.PixelData = ds.PixelData * 2
            elif keyword == "NumberOfFrames":  # a junk IS value, written as its bytes
                ds.add_new(0x00280008, "IS", "99")
            elif value is None:
                delattr(ds, keyword)
            else:
                setattr(ds, keyword, value)
        ds.save_as(path, enforce_file_format=False)
    if "NumberOfFrames" in tags:
        junk = tags["NumberOfFrames"].encode().ljust(2)[:2]
        path.write_bytes(path.read_bytes().replace(b"\x28\x00\x08\x00IS\x02\x0099", b"\x28\x00\x08\x00IS\x02\x00" + junk))
    return path


@pytest.mark.parametrize(
    "tags,reason",
    [
        ({"Rows": 8}, "its pixel data holds 512 bytes, 2 frames of 8 x 32, but the header declares one"),
        ({"PixelData": "twice"}, "its pixel data holds 1024 bytes, 2 frames of 16 x 32"),
        ({"BitsAllocated": 1}, "BitsAllocated 1: a radiograph has 8, 16 or 32"),
        ({"NumberOfFrames": "ab"}, "NumberOfFrames 'ab' is not an integer"),
    ],
    ids=["rows-halved", "data-twice", "one-bit", "frames-not-a-number"],
)
def test_a_header_that_does_not_fit_its_pixel_data_is_named_by_the_reader_and_the_training_check(tmp_path, tags,
                                                                                                   reason):
    from scripts.data.checks import item_problem

    path = _edited(write_test_dicom(tmp_path / "a.dcm", np.zeros((16, 32), np.uint8), jpeg_quality=None), **tags)
    with pytest.raises((ValueError, RuntimeError)) as raised:
        load(path)
    error = raised.value.__cause__ if isinstance(raised.value, RuntimeError) and raised.value.__cause__ else raised.value
    assert f"{path}: {reason}" in str(error)
    assert reason in item_problem({"image": str(path)})


def test_a_check_that_fails_on_a_header_is_that_files_reason_not_the_end_of_the_check(tmp_path):
    from scripts.data.checks import check_datalist

    good = write_test_dicom(tmp_path / "good.dcm", np.zeros((16, 32), np.uint8), jpeg_quality=None)
    bad = _edited(write_test_dicom(tmp_path / "bad.dcm", np.zeros((16, 32), np.uint8), jpeg_quality=None),
                  TransferSyntaxUID=None)
    kept = check_datalist({"training": [{"image": str(good)}, {"image": str(bad)}]}, report=tmp_path / "bad.csv",
                          skip_bad="true")
    assert kept["training"] == [{"image": str(good)}]
    assert "no TransferSyntaxUID" in (tmp_path / "bad.csv").read_text()


@pytest.mark.slow
def test_inference_lists_every_hostile_file_and_processes_the_rest(tmp_path):
    folder = tmp_path / "in"
    pixels, mask = asymmetric_case(300, 220)
    write_test_dicom(folder / "good.dcm", pixels, sop_instance_uid="1.2.826.0.1.3680043.8.498.1", jpeg_quality=None)
    jpeg_bomb(folder / "bomb.dcm")
    _png(folder / "x.dcm")
    (folder / "empty.dcm").write_bytes(b"")
    (folder / "dangling.dcm").symlink_to(folder / "gone.dcm")
    (folder / "loop.dcm").symlink_to(folder / "loop.dcm")
    _edited(write_test_dicom(folder / "twice.dcm", pixels, jpeg_quality=None), PixelData="twice")
    weights = tmp_path / "ckpt"
    weights.mkdir()
    torch.save(BrightnessNet().state_dict(), weights / "model.pt")
    from tests.test_inference import _run_inference

    out = tmp_path / "out"
    _run_inference(folder, out, weights, "--num_workers", "2")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["processed"] == 1 and summary["failed"] == 6
    errors = dict(line.split(",", 1) for line in (out / "errors.csv").read_text().splitlines()[1:])
    reasons = {Path(path).name: reason for path, reason in errors.items()}
    assert "60000 x 60000" in reasons["bomb.dcm"] and "a PNG image, not DICOM" in reasons["x.dcm"]
    assert "empty file" in reasons["empty.dcm"] and "dangling symbolic link" in reasons["dangling.dcm"]
    assert "symbolic link loop" in reasons["loop.dcm"] and "2 frames of 300 x 220" in reasons["twice.dcm"]
    rows = (out / "submission.csv").read_text().splitlines()
    assert rows == ["ImageId,EncodedPixels", f"1.2.826.0.1.3680043.8.498.1,{rle.encode(mask)}"]


def _dies_on_the_killer(item):
    if item["image"].endswith("killer.dcm") and os.getpid() != _PARENT:
        os.kill(os.getpid(), 9)  # what the kernel's out-of-memory killer does
    return {"image": torch.zeros(1, 4, 4)}


_PARENT = os.getpid()


def test_a_loader_worker_that_dies_is_reported_with_the_file_it_held(tmp_path):
    from monai.data import DataLoader

    from scripts.inference.engine import FolderEvaluator, LoaderWorkerDied, SafeDataset

    items = [{"image": str(tmp_path / name)} for name in ("a.dcm", "b.dcm", "killer.dcm", "d.dcm")]
    dataset = SafeDataset(items, transform=_dies_on_the_killer)
    loader = DataLoader(dataset, batch_size=1, num_workers=1)
    evaluator = FolderEvaluator(device=torch.device("cpu"), val_data_loader=loader, network=torch.nn.Identity())
    with pytest.raises(LoaderWorkerDied, match=r"died while loading .*killer\.dcm \(pid \d+, killed by SIGKILL\)"):
        evaluator.run()


def test_the_loading_notes_go_with_their_dataset(tmp_path):
    import gc

    from scripts.inference.engine import SafeDataset

    dataset = SafeDataset([{"image": str(tmp_path / "a.dcm")}], transform=_dies_on_the_killer)
    dataset[0]
    notes = dataset.notes
    assert dataset.held_by(os.getpid()) == str(tmp_path / "a.dcm")
    del dataset
    gc.collect()
    assert not notes.exists()


def test_a_killed_runs_loading_notes_are_removed_by_the_next_run(tmp_path, monkeypatch):
    import tempfile

    from scripts.inference.engine import SafeDataset

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f"siim-loading-{dead.stdout.strip()}-abc"  # what a SIGKILLed run leaves
    alive = tmp_path / f"siim-loading-{os.getpid()}-def"  # another dataset of a living process
    for folder in (stale, alive):
        folder.mkdir()
        (folder / "123").write_text("x.dcm")
    dataset = SafeDataset([{"image": "x.dcm"}])
    assert not stale.exists() and alive.exists() and dataset.notes.parent == tmp_path


# ------------------------------------------------------------------------------------------ reused output folders
def _items(folder, uids, positive=True):
    from monai.data import MetaTensor

    pixels, mask = asymmetric_case(60, 40)
    out = []
    for uid in uids:
        path = write_test_dicom(folder / f"{uid}.dcm", pixels, sop_instance_uid=uid, jpeg_quality=None)
        meta = {"filename_or_obj": str(path), "SOPInstanceUID": uid, "Rows": 60, "Columns": 40}
        pred = torch.from_numpy((mask.T[None] if positive else np.zeros((1, 40, 60))).astype(np.float32))
        out.append({"image": MetaTensor(pred.clone(), meta=meta), "pred": pred})
    return out


def _write_run(out, items, **kwargs):
    from types import SimpleNamespace

    from scripts.inference.writer import InferenceWriter

    writer = InferenceWriter(out, **kwargs)
    writer(SimpleNamespace(state=SimpleNamespace(output=items)))
    return writer.finish()


def test_a_folder_with_results_is_refused_unless_overwrite_and_nothing_is_touched(tmp_path):
    out = tmp_path / "out"
    _write_run(out, _items(tmp_path / "a", ["1.1"]))
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match=r"output_dir .*out is not empty \(errors.csv, masks, predictions.csv, seg, \.\.\.\): pass --overwrite true"):
        _write_run(out, _items(tmp_path / "b", ["2.2"]))
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("workers", [0, 2])
def test_overwriting_replaces_the_whole_result_set_so_no_stale_seg_or_mask_survives(tmp_path, workers):
    out = tmp_path / "out"
    _write_run(out, _items(tmp_path / "a", ["1.1", "1.2"]), workers=workers)
    assert {p.name for p in (out / "seg").iterdir()} == {"1.1.dcm", "1.2.dcm"}
    _write_run(out, _items(tmp_path / "b", ["2.1"], positive=False), workers=workers, overwrite="true")
    assert not (out / "seg").exists()  # the new run found no pneumothorax: no SEG of the old one may claim one
    assert [p.name for p in (out / "masks").iterdir()] == ["2.1.png"]
    assert (out / "submission.csv").read_text().splitlines() == ["ImageId,EncodedPixels", "2.1,-1"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.")] == [".out.lock"]  # no staging left


@pytest.mark.parametrize("where", ["the input", "above the input"])
def test_an_output_folder_that_holds_the_input_is_never_replaced_even_with_overwrite(tmp_path, where):
    from scripts.inference.inputs import scan_dicom_inputs

    items = _items(tmp_path / "study" / "images", ["1.1", "1.2"])
    out = tmp_path / "study" / "images" if where == "the input" else tmp_path / "study"
    scan = scan_dicom_inputs(tmp_path / "study" / "images")
    with pytest.raises(ValueError, match=r"output_dir .* holds the input \(.*images\): a run replaces its output folder"):
        _write_run(out, items, scan=scan, overwrite="true")
    assert sorted(p.name for p in (tmp_path / "study" / "images").iterdir()) == ["1.1.dcm", "1.2.dcm"]


def test_overwrite_replaces_only_a_folder_of_results(tmp_path):
    out = tmp_path / "out"
    (out / "notes").mkdir(parents=True)
    (out / "report.docx").write_bytes(b"the radiologist's report")
    with pytest.raises(ValueError, match=r"holds what is not an inference result \(notes, report.docx\): it is never "
                                         r"replaced, even with --overwrite true"):
        _write_run(out, _items(tmp_path / "a", ["1.1"]), overwrite="true")
    assert (out / "report.docx").read_bytes() == b"the radiologist's report"


def test_a_second_run_into_a_folder_being_written_is_refused_and_a_dead_runs_staging_removed(tmp_path):
    from scripts.inference.result_folder import ResultFolder

    out = tmp_path / "out"
    stale = tmp_path / ".out.partial-1"  # a killed run's: nobody holds the lock
    (stale / "masks").mkdir(parents=True)
    first = ResultFolder(out)
    staging = first.open()
    assert not stale.exists()
    (staging / "submission.csv").write_text("ImageId,EncodedPixels\n")
    with pytest.raises(ValueError, match=r"output_dir .*out: another inference run is writing into it"):
        ResultFolder(out).open()  # the same process id (as two containers' first processes) changes nothing
    assert (staging / "submission.csv").is_file()
    first.publish()
    assert (out / "submission.csv").is_file() and sorted(p.name for p in tmp_path.iterdir()) == [".out.lock", "out"]
    second = ResultFolder(out, overwrite=True)
    second.open()
    second.discard()


_START_TOGETHER = """
import sys, time
sys.path.insert(0, sys.argv[1])
from scripts.inference.result_folder import ResultFolder
time.sleep(max(0.0, float(sys.argv[3]) - time.time()))
try:
    ResultFolder(sys.argv[2]).open()
    print("opened", flush=True)
    time.sleep(2)
except ValueError as error:
    print("refused", error)
"""


def test_of_runs_started_at_the_same_instant_exactly_one_gets_the_folder(tmp_path):
    import time

    start = str(time.time() + 2)
    runs = [subprocess.Popen([sys.executable, "-c", _START_TOGETHER, str(REPO), str(tmp_path / "out"), start],
                             stdout=subprocess.PIPE, text=True) for _ in range(4)]
    outcomes = sorted(run.communicate(timeout=60)[0].split()[0] for run in runs)
    assert outcomes == ["opened", "refused", "refused", "refused"]


def test_an_output_folder_that_is_a_link_gets_the_results_in_the_linked_folder(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "out").symlink_to(tmp_path / "real")
    _write_run(tmp_path / "out", _items(tmp_path / "a", ["1.1"]))
    assert (tmp_path / "out").is_symlink() and (tmp_path / "real" / "submission.csv").is_file()
    _write_run(tmp_path / "out", _items(tmp_path / "b", ["2.1"]), overwrite="true")
    assert (tmp_path / "out").is_symlink() and "2.1" in (tmp_path / "real" / "submission.csv").read_text()


def test_what_appears_in_the_output_folder_during_a_run_is_kept_and_so_are_the_runs_results(tmp_path):
    from scripts.inference.result_folder import ResultFolder

    out = tmp_path / "out"
    _write_run(out, _items(tmp_path / "a", ["1.1"]))
    from scripts.inference.writer import RESULT_NAMES

    folder = ResultFolder(out, overwrite=True, result_names=RESULT_NAMES)
    staging = folder.open()
    (staging / "submission.csv").write_text("new")
    (out / ".DS_Store").write_bytes(b"finder")
    with pytest.raises(ValueError, match=r"holds what is not an inference result \(\.DS_Store\).*; this run's "
                                         r"results are kept in .*\.out\.partial-"):
        folder.publish()
    assert (out / ".DS_Store").is_file() and (staging / "submission.csv").read_text() == "new"


def test_the_current_folder_is_never_an_output_folder(tmp_path, monkeypatch):
    from scripts.inference.result_folder import ResultFolder

    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    for out in (tmp_path / "work", tmp_path):
        with pytest.raises(ValueError, match="holds the current folder"):
            ResultFolder(out, overwrite=True).open()


def test_linked_folders_are_searched_once_and_hidden_ones_listed(tmp_path):
    from scripts.inference.inputs import scan_dicom_inputs

    inside = tmp_path / "in"
    write_test_dicom(inside / "a.dcm", np.zeros((8, 8), np.uint8), jpeg_quality=None)
    write_test_dicom(tmp_path / "elsewhere" / "study2" / "b.dcm", np.zeros((8, 8), np.uint8), jpeg_quality=None)
    write_test_dicom(inside / ".incoming" / "c.dcm", np.zeros((8, 8), np.uint8), jpeg_quality=None)
    (inside / "study2").symlink_to(tmp_path / "elsewhere" / "study2")
    (inside / "again").symlink_to(tmp_path / "elsewhere" / "study2")  # a second link to the same folder
    (inside / "loop").symlink_to(inside)
    scan = scan_dicom_inputs(inside)
    assert [p.name for p in scan.files] == ["a.dcm", "b.dcm"]
    assert scan.hidden_folders == [inside / ".incoming"]
    summary = _write_run(tmp_path / "out", _items(tmp_path / "x", ["1.1"]), scan=scan)
    assert summary["hidden_folders_not_searched"] == [str(inside / ".incoming")]


def test_a_failed_run_leaves_the_previous_results_as_they_were(tmp_path):
    from ignite.engine import Engine

    from scripts.inference.writer import InferenceWriter

    out = tmp_path / "out"
    _write_run(out, _items(tmp_path / "a", ["1.1"]))
    before = (out / "submission.csv").read_text()
    items = _items(tmp_path / "b", ["2.1", "2.2"])

    def step(engine, index):
        if index == 1:
            raise RuntimeError("the GPU fell over")
        return [items[index]]

    engine = Engine(step)
    InferenceWriter(out, workers=2, overwrite=True).attach(engine)
    with pytest.raises(RuntimeError, match="the GPU fell over"):
        engine.run([0, 1])
    assert (out / "submission.csv").read_text() == before and [p.name for p in (out / "masks").iterdir()] == ["1.1.png"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.")] == [".out.lock"]  # no staging left


def test_an_output_path_that_is_a_file_is_one_clear_error(tmp_path):
    (tmp_path / "results").write_text("I am a file")
    with pytest.raises(ValueError, match=r"output_dir .*results is a file, not a folder"):
        _write_run(tmp_path / "results", [])


def test_an_input_without_dicom_files_is_an_error_and_the_output_folder_is_not_read_back(tmp_path):
    from scripts.inference.inputs import scan_dicom_inputs

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match=r"empty holds no DICOM file \(1 other files skipped\)"):
        scan_dicom_inputs(tmp_path / "empty")
    write_test_dicom(tmp_path / "in" / "a.dcm", np.zeros((8, 8), np.uint8), sop_instance_uid="1.1", jpeg_quality=None)
    write_test_dicom(tmp_path / "in" / "results" / "seg" / "old.dcm", np.zeros((8, 8), np.uint8), jpeg_quality=None)
    scan = scan_dicom_inputs(tmp_path / "in", exclude=[tmp_path / "in" / "results"])
    assert [p.name for p in scan.files] == ["a.dcm"]


@pytest.mark.slow
def test_inference_on_an_empty_folder_exits_non_zero_and_keeps_the_old_results(tmp_path):
    from tests.test_inference import _run_inference

    weights = tmp_path / "ckpt"
    weights.mkdir()
    torch.save(BrightnessNet().state_dict(), weights / "model.pt")
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "submission.csv").write_text("ImageId,EncodedPixels\nold,-1\n")
    with pytest.raises(AssertionError, match="holds no DICOM file"):
        _run_inference(tmp_path / "empty", out, weights, "--overwrite", "true")
    assert (out / "submission.csv").read_text() == "ImageId,EncodedPixels\nold,-1\n"


# ---------------------------------------------------------------------------------------------- input selection
def _with_tags(path, **tags):
    import pydicom

    ds = pydicom.dcmread(path)
    for keyword, value in tags.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.save_as(path)
    return path


@pytest.mark.parametrize(
    "tags,reason",
    [
        ({"ViewPosition": "LL"}, "ViewPosition LL (the model is for PA, AP, absent)"),
        ({"Modality": "CT", "BodyPartExamined": "ABDOMEN"}, "Modality CT (the model is for CR, DX); BodyPartExamined ABDOMEN"),
        ({"Modality": "US"}, "Modality US"),
        ({"BodyPartExamined": "KNEE"}, "BodyPartExamined KNEE"),
    ],
)
def test_inputs_the_model_is_not_for_are_skipped_with_their_reason(tmp_path, tags, reason):
    from scripts.inference.selection import NotSelected, SelectRadiographd

    path = _with_tags(write_test_dicom(tmp_path / "x.dcm", np.zeros((8, 8), np.uint8), jpeg_quality=None), **tags)
    with pytest.raises(NotSelected, match=__import__("re").escape(reason)):
        SelectRadiographd("image")({"image": str(path)})


@pytest.mark.parametrize("tags", [{}, {"ViewPosition": None, "BodyPartExamined": None}, {"Modality": "DX", "ViewPosition": "ap", "BodyPartExamined": "Chest"}])
def test_frontal_chest_radiographs_and_absent_tags_pass(tmp_path, tags):
    from scripts.inference.selection import SelectRadiographd

    path = _with_tags(write_test_dicom(tmp_path / "x.dcm", np.zeros((8, 8), np.uint8), jpeg_quality=None), **tags)
    assert SelectRadiographd("image")({"image": str(path)}) == {"image": str(path)}


@pytest.mark.slow
def test_inference_segments_the_frontal_radiograph_and_lists_the_lateral_one_as_skipped(tmp_path):
    from tests.test_inference import _run_inference

    pixels, mask = asymmetric_case(300, 220)
    folder = tmp_path / "in"
    write_test_dicom(folder / "pa.dcm", pixels, sop_instance_uid="1.2.826.0.1.3680043.8.498.1", jpeg_quality=None)
    lateral = write_test_dicom(folder / "lat.dcm", pixels, sop_instance_uid="1.2.826.0.1.3680043.8.498.2", jpeg_quality=None)
    _with_tags(lateral, ViewPosition="LL")
    weights = tmp_path / "ckpt"
    weights.mkdir()
    torch.save(BrightnessNet().state_dict(), weights / "model.pt")
    out = tmp_path / "out"
    _run_inference(folder, out, weights)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["processed"] == 1 and summary["skipped_by_rules"] == 1 and summary["errors"] == 0
    assert summary["dicom_files"] == 2
    skipped = (out / "skipped.csv").read_text().splitlines()
    assert skipped == ["file,reason", f'{lateral},"ViewPosition LL (the model is for PA, AP, absent)"']
    assert [row.split(",")[0] for row in (out / "submission.csv").read_text().splitlines()[1:]] == ["1.2.826.0.1.3680043.8.498.1"]
    # the rules are configurable: admitting lateral views segments both
    out2 = tmp_path / "out2"
    _run_inference(folder, out2, weights, "--input_rules#view_positions", "['PA','AP','LL','']")
    assert json.loads((out2 / "summary.json").read_text())["processed"] == 2


# ------------------------------------------------------------------------------------------- killed inference runs
def _descendants(pid):
    children = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _alive(pids):
    alive = []
    for pid in pids:
        try:
            state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.append(pid)
    return alive


_POOL_PARENT = """
import sys, time
sys.path.insert(0, sys.argv[1])
from scripts.utils.processes import process_pool
pool = process_pool(2)
futures = [pool.submit(time.sleep, 60) for _ in range(2)]
print("started", flush=True)
time.sleep(60)
"""


def test_the_workers_of_a_process_pool_end_when_their_parent_is_killed():
    """Both pools of the bundle (inference writers, training-file checks) are made by ``process_pool``."""
    import signal
    import time

    parent = subprocess.Popen([sys.executable, "-c", _POOL_PARENT, str(REPO)], stdout=subprocess.PIPE, text=True,
                              env=bundle_env())
    workers = []
    try:
        assert parent.stdout.readline().strip() == "started"
        deadline = time.monotonic() + 10
        while len(workers := _descendants(parent.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(workers) >= 2
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 10
        while _alive(workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _alive(workers) == []
    finally:
        parent.kill()
        for pid in _alive(workers):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_a_killed_inference_run_leaves_no_processes_and_its_folder_as_it_was(tmp_path, how):
    import signal
    import time

    from tests.conftest import COMMON, config_files

    folder = tmp_path / "in"
    pixels, _ = asymmetric_case(300, 220)
    for i in range(120):
        write_test_dicom(folder / f"{i}.dcm", pixels, sop_instance_uid=f"1.2.826.0.1.3680043.8.498.{i + 1}", jpeg_quality=None)
    weights = tmp_path / "ckpt"
    weights.mkdir()
    torch.save(BrightnessNet().state_dict(), weights / "model.pt")
    out = tmp_path / "out"
    out.mkdir()
    (out / "submission.csv").write_text("ImageId,EncodedPixels\nold,-1\n")
    command = [
        sys.executable, "-m", "monai.bundle", "run",
        "--config_file", config_files(COMMON, "configs/inference.json", str(REPO / "tests/configs/inference_brightness.json")),
        "--bundle_root", str(REPO), "--dataset_dir", str(folder), "--output_dir", str(out), "--ckpt_dir", str(weights),
        "--overwrite", "true", "--num_workers", "2", "--write_workers", "2", "--write_overlays", "true",
    ]  # fmt: skip
    process = subprocess.Popen(command, cwd=REPO, env=bundle_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        staging = list(tmp_path.glob(".out.partial-*/masks/*.png"))
        if len(_descendants(process.pid)) >= 4 and staging:  # loader and writer processes at work
            break
        time.sleep(0.05)
    assert process.poll() is None, process.stderr.read().decode()[-3000:]
    children = _descendants(process.pid)
    process.send_signal(getattr(signal, how))
    code = process.wait(timeout=60)
    deadline = time.monotonic() + 20
    while _alive(children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _alive(children) == [], f"orphans after {how}"
    assert code == (-9 if how == "SIGKILL" else 143), process.stderr.read().decode()[-3000:]
    assert (out / "submission.csv").read_text() == "ImageId,EncodedPixels\nold,-1\n"  # the previous results
    if how == "SIGTERM":  # a clean end: no staging folder left either
        assert not list(tmp_path.glob(".out.partial-*"))


# ------------------------------------------------------------------------------------- bad files among training data
def _training_folder(root, n=6):
    from scripts.siim.rle_csv import write_rle_csv

    pixels, mask = asymmetric_case(60, 40)
    rows = []
    for i in range(n):
        uid = f"1.2.826.0.1.3680043.8.498.{i + 1}"
        write_test_dicom(root / "dicom-images-train" / f"{i}" / f"{uid}.dcm", pixels, sop_instance_uid=uid, jpeg_quality=None)
        rows.append((uid, rle.encode(mask) if i % 2 else "-1"))
    write_rle_csv(root / "train-rle.csv", rows, style="stage1")
    return root


def _spoil(root):
    """Three bad files among good ones: truncated, a PNG under a DICOM's name, an annotation past the image's end."""
    files = sorted((root / "dicom-images-train").rglob("*.dcm"))
    data = files[0].read_bytes()
    files[0].write_bytes(data[: len(data) // 2])
    _png(files[1])
    uid = files[2].stem
    csv_text = (root / "train-rle.csv").read_text().replace(f"{uid}, -1", f"{uid}, 2000 500")
    (root / "train-rle.csv").write_text(csv_text)
    return files[:3]


@pytest.mark.parametrize("workers", [1, 2])
def test_all_bad_training_files_are_listed_at_once_before_training(tmp_path, workers):
    from scripts.data.checks import check_datalist
    from scripts.siim.datalist import load_fold

    bad = _spoil(_training_folder(tmp_path / "siim", n=80 if workers > 1 else 6))
    datalist = load_fold(tmp_path / "siim", fold=0, n_folds=2)
    report = tmp_path / "datalist.bad_files.csv"
    with pytest.raises(ValueError, match=r"3 of \d+ training and validation files cannot be used") as raised:
        check_datalist(datalist, report=report, workers=workers)
    message = str(raised.value)
    assert f"{bad[0]}: truncated" in message and f"{bad[1]}: a PNG image, not DICOM" in message
    assert f"{bad[2]}: annotation runs past the end of the 60 x 40 image" in message
    assert "--skip_bad_files true" in message and len(report.read_text().splitlines()) == 4
    kept = check_datalist(datalist, report=report, skip_bad="true", workers=workers)
    images = {item["image"] for key in ("training", "validation") for item in kept[key]}
    assert not images & {str(path) for path in bad} and len(images) == sum(map(len, datalist.values())) - 3


@pytest.mark.slow
def test_training_with_a_bad_file_stops_in_one_message_or_leaves_it_out(tmp_path):
    from tests.conftest import run_bundle
    from tests.test_bundle_training import train_args

    _spoil(_training_folder(tmp_path / "siim", n=20))
    result = run_bundle(train_args(tmp_path / "siim", tmp_path / "a", max_epochs=1), check=False)
    assert result.returncode != 0 and "3 of 20 training and validation files cannot be used" in result.stderr
    result = run_bundle(train_args(tmp_path / "siim", tmp_path / "b", max_epochs=1, skip_bad_files="true"))
    assert (tmp_path / "b" / "train" / "datalist.bad_files.csv").is_file()
    assert torch.load(tmp_path / "b" / "models" / "model.pt", weights_only=True)


class _FailsFirst(Transform):
    """A cached transform: item 0 fails once item 1 is running; the others run torch matrix products (C++ code
    with the GIL released) for ``seconds``."""

    def __init__(self, seconds):
        import threading

        self.seconds, self.started, self.finished = seconds, threading.Event(), []

    def __call__(self, item):
        import time

        if item["i"] == 0:
            self.started.wait(10)
            raise ValueError("bad file 0")
        self.started.set()
        end, x = time.monotonic() + self.seconds, torch.ones(300, 300)
        while time.monotonic() < end:
            x = torch.tanh(x @ x)
        self.finished.append(item["i"])
        return item


def test_a_failing_cache_fill_stops_its_loading_threads_before_the_error_goes_on():
    import threading

    from scripts.data.cache import CacheDataset

    transform = _FailsFirst(seconds=0.5)
    before = set(threading.enumerate())
    with pytest.raises(RuntimeError, match="applying transform") as raised:
        CacheDataset([{"i": i} for i in range(40)], transform=transform, num_workers=2, progress=False)
    assert "bad file 0" in str(raised.value.__cause__)
    assert [t for t in threading.enumerate() if t not in before and t.is_alive()] == []
    assert transform.finished and len(transform.finished) < 39  # the running items finished, the rest never began


_FAILING_CACHE = """
import sys
sys.path.insert(0, sys.argv[1])
from scripts.data.cache import CacheDataset
from tests.test_hostile_input import _FailsFirst
CacheDataset([{"i": i} for i in range(200)], transform=_FailsFirst(seconds=0.2), num_workers=4, progress=False)
"""


def test_a_training_run_whose_cache_fill_fails_exits_with_its_error_not_an_abort():
    """The cause of "terminate called without an active exception" (exit 134) after a failing training run: cache
    threads still inside torch when Python exits. Two runs, each of which aborted before the fix."""
    for _ in range(2):
        result = subprocess.run([sys.executable, "-c", _FAILING_CACHE, str(REPO)], capture_output=True, text=True,
                                env=bundle_env(), timeout=120)
        assert "terminate called" not in result.stderr and result.returncode == 1, result.stderr[-2000:]
        assert "ValueError: bad file 0" in result.stderr


# ---------------------------------------------------------------------------------------------- readable errors
def test_an_unreadable_checkpoint_says_what_is_wrong_with_it(tmp_path):
    from scripts.training.checkpoints import load_weights

    torch.save(torch.nn.Conv2d(1, 1, 1).state_dict(), tmp_path / "whole.pt")
    data = (tmp_path / "whole.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.pt").write_bytes(b"")
    for name in ("cut.pt", "empty.pt"):
        with pytest.raises(ValueError, match=rf"{name}: cannot be read as PyTorch weights \(\w+.*; \d+ bytes\): a truncated copy"):
            load_weights(torch.nn.Conv2d(1, 1, 1), tmp_path / name)


@pytest.mark.slow
def test_a_failing_command_prints_one_message_naming_the_file_unless_debugging(tmp_path):
    from tests.conftest import COMMON, config_files, run_bundle
    from tests.test_bundle_training import META
    from tests.test_inference import BRIGHTNESS

    write_test_dicom(tmp_path / "in" / "a.dcm", np.zeros((8, 8), np.uint8), jpeg_quality=None)
    (tmp_path / "ckpt").mkdir()
    args = ["run", "--config_file", config_files(COMMON, "configs/inference.json", BRIGHTNESS), "--meta_file", META,
            "--bundle_root", str(REPO), "--dataset_dir", str(tmp_path / "in"), "--output_dir", str(tmp_path / "out"),
            "--ckpt_dir", str(tmp_path / "ckpt")]  # fmt: skip
    result = run_bundle(args, check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert f"error: FileNotFoundError: no weights at {tmp_path / 'ckpt' / 'model.pt'}" in result.stderr
    debug = run_bundle([*args, "--debug", "true"], check=False)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


@pytest.mark.slow
def test_evaluating_weights_of_another_network_names_the_file(tiny_siim, tmp_path):
    from tests.conftest import run_bundle
    from tests.test_bundle_training import train_args

    (tmp_path / "models").mkdir()
    torch.save(torch.nn.Conv2d(1, 1, 1).state_dict(), tmp_path / "models" / "model.pt")
    args = train_args(tiny_siim, tmp_path, "configs/evaluate.json")
    result = run_bundle(args, check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert f"{tmp_path / 'models' / 'model.pt'}: weights of another network than network_config" in result.stderr


def test_a_source_with_a_malformed_study_date_costs_only_its_seg_with_the_reason(tmp_path):
    import pydicom

    items = _items(tmp_path / "a", ["1.1", "1.2"])
    source = Path(items[0]["image"].meta["filename_or_obj"])
    ds = pydicom.dcmread(source)
    with pydicom.config.disable_value_validation():
        ds.StudyDate = "2026-13-45"
    ds.save_as(source)
    summary = _write_run(tmp_path / "out", items)
    assert summary["processed"] == 2 and summary["errors"] == 1
    errors = (tmp_path / "out" / "errors.csv").read_text()
    assert "DICOM SEG not written: ValueError: StudyDate '2026-13-45' of the source is not a DICOM YYYYMMDD value" in errors
    assert [p.name for p in (tmp_path / "out" / "seg").iterdir()] == ["1.2.dcm"]


def _with_name(path, stored: bytes, character_set):
    """Rewrite ``path`` with PatientName stored as exactly ``stored`` under ``character_set`` (None: undeclared)."""
    import pydicom

    ds = pydicom.dcmread(path)
    with pydicom.config.disable_value_validation():
        if character_set is None:
            del ds.SpecificCharacterSet
        else:
            ds.SpecificCharacterSet = character_set
        ds.add_new(0x00100010, "PN", stored)
        ds.save_as(path)
    return path


def _stored_name(path) -> bytes:
    import pydicom

    return pydicom.dcmread(path).get_item(0x00100010).value.rstrip(b" ")


_JIS = ["", "ISO 2022 IR 87"]


@pytest.mark.parametrize(
    "character_set, stored, valid",
    [
        ("ISO_IR 100", "Müller^Hans".encode("latin-1"), True),
        ("ISO_IR 192", "Müller^Hans".encode("utf-8"), True),
        (_JIS, b"Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B", True),
        ("ISO_IR 192", "Müller^Hans".encode("latin-1"), False),  # Latin-1 bytes under a UTF-8 declaration
        (None, "Müller^Hans".encode("latin-1"), False),  # non-ASCII with no character set declared
        (_JIS, b"Yamada^Tarou=\x1b$B\xff\xfe\x1b(B", False),  # not JIS X 0208 after its escape sequence
    ],
)
def test_a_seg_keeps_its_sources_patient_name_byte_for_byte_and_names_an_invalid_one(tmp_path, character_set, stored,
                                                                                     valid):
    import pydicom

    from scripts.inference.dicom_seg import write_segmentation

    path = write_test_dicom(tmp_path / "a.dcm", np.zeros((8, 8), np.uint8), jpeg_quality=None)
    _with_name(path, stored, character_set)
    problems = write_segmentation(tmp_path / "seg.dcm", pydicom.dcmread(path, stop_before_pixels=True),
                                  np.ones((8, 8), np.uint8))
    assert _stored_name(tmp_path / "seg.dcm") == stored
    seg = pydicom.dcmread(tmp_path / "seg.dcm")
    assert seg.get("SpecificCharacterSet") == pydicom.dcmread(path).get("SpecificCharacterSet")
    declared = "default character repertoire (ASCII)" if character_set is None else "declared character set"
    expected = [] if valid else [f"PatientName is not valid text in its {declared}"]
    assert [problem.split(";")[0].split(" '")[0] for problem in problems] == expected


def test_a_patient_name_invalid_in_its_character_set_is_listed_and_its_seg_still_written(tmp_path):
    items = _items(tmp_path / "a", ["1.1", "1.2"])
    source = _with_name(Path(items[0]["image"].meta["filename_or_obj"]), b"M\xfcller^Hans", "ISO_IR 192")
    summary = _write_run(tmp_path / "out", items)
    assert summary["processed"] == 2 and summary["errors"] == 1
    errors = (tmp_path / "out" / "errors.csv").read_text()
    assert (f"{source},DICOM SEG: PatientName is not valid text in its declared character set 'ISO_IR 192'; the SEG "
            "keeps its bytes unchanged") in errors
    assert _stored_name(tmp_path / "out" / "seg" / "1.1.dcm") == b"M\xfcller^Hans"


def test_a_character_set_dicom_does_not_define_costs_only_the_seg_with_the_reason(tmp_path):
    items = _items(tmp_path / "a", ["1.1", "1.2"])
    _with_name(Path(items[0]["image"].meta["filename_or_obj"]), b"M\xfcller", "ISO_IR 999")
    summary = _write_run(tmp_path / "out", items)
    assert summary["processed"] == 2 and summary["errors"] == 1
    errors = (tmp_path / "out" / "errors.csv").read_text()
    assert ("DICOM SEG not written: ValueError: SpecificCharacterSet 'ISO_IR 999' of the source is not a DICOM "
            "character set ('ISO_IR 999' is not a defined term)") in errors
    assert [p.name for p in (tmp_path / "out" / "seg").iterdir()] == ["1.2.dcm"]


def test_an_undecodable_file_gets_the_bundles_reason_with_every_decoders_on_one_line(tmp_path):
    from monai.transforms import Compose

    from scripts.utils.errors import error_reason

    path = write_test_dicom(tmp_path / "a.dcm", (np.arange(64 * 64) % 251).reshape(64, 64).astype(np.uint8),
                            jpeg_quality=90)
    path.write_bytes(path.read_bytes().replace(b"\xff\xdb", b"\xff\xfe"))  # its quantisation tables become comments
    with pytest.raises(RuntimeError) as raised:  # MONAI wraps the reader's error
        Compose([LoadRadiographd(keys="image")])({"image": str(path)})
    reason = error_reason(raised.value, str(path))
    assert reason.startswith("ValueError: pixel data cannot be decoded: ") and "\n" not in reason
    assert "no quantization table" in reason and "pillow: " in reason and str(path) not in reason
    assert error_reason(raised.value).startswith(f"ValueError: {path}: pixel data cannot be decoded")


# ---------------------------------------------------------------------------------------------- CSV outputs
def test_reason_csvs_parse_back_whatever_the_file_names_hold(tmp_path):
    import csv

    from scripts.utils.files import write_reasons_csv

    latin1 = os.fsdecode(b"/in/M\xfcller.dcm")  # a name that is not UTF-8: its byte arrives as a surrogate
    rows = [(latin1, "truncated"), ("/in/a\rb.dcm", "not DICOM"), ("/in/c\nd,e\".dcm", "empty file")]
    write_reasons_csv(tmp_path / "errors.csv", rows)
    with open(tmp_path / "errors.csv", newline="", encoding="utf-8") as handle:
        parsed = list(csv.reader(handle))
    assert parsed == [["file", "reason"], ["/in/M\\xfcller.dcm", "truncated"], *map(list, rows[1:])]


def test_a_training_file_with_a_name_that_is_not_utf8_is_listed_not_the_end_of_the_check(tmp_path):
    from scripts.data.checks import check_datalist

    path = write_test_dicom(tmp_path / "good.dcm", np.zeros((16, 32), np.uint8), jpeg_quality=None)
    bad = Path(os.fsdecode(bytes(tmp_path) + b"/M\xfcller.dcm"))
    bad.write_bytes(path.read_bytes()[:300])
    with pytest.raises(ValueError, match="1 of 2 training and validation files cannot be used"):
        check_datalist({"training": [{"image": str(path)}, {"image": str(bad)}]}, report=tmp_path / "bad.csv")
    assert "M\\xfcller.dcm" in (tmp_path / "bad.csv").read_text(encoding="utf-8")


def test_an_annotation_as_long_as_a_line_may_be_is_read(tmp_path):
    from scripts.siim.rle_csv import read_rle_csv

    runs = " ".join(["1 1"] * 200_000)  # 800 kB: above Python's default CSV field limit, within the 1 MiB line limit
    (tmp_path / "long.csv").write_text(f"ImageId,EncodedPixels\n1.2.3,{runs}\n")
    assert read_rle_csv(tmp_path / "long.csv").annotations == {"1.2.3": [runs]}


def test_an_image_whose_uid_holds_a_line_break_is_an_error_and_the_submission_parses_back(tmp_path):
    from scripts.siim.rle_csv import read_rle_csv

    items = _items(tmp_path / "a", ["1.1", "1.2"])
    items[0]["image"].meta["SOPInstanceUID"] = "1.1\n9.9"
    summary = _write_run(tmp_path / "out", items)
    assert summary["processed"] == 1 and summary["failed"] == 1
    assert "holds control characters; it cannot be an ImageId" in (tmp_path / "out" / "errors.csv").read_text()
    assert list(read_rle_csv(tmp_path / "out" / "submission.csv").annotations) == ["1.2"]


def test_a_radiograph_stored_inverted_with_an_inverse_presentation_lut_is_read_as_displayed(tmp_path):
    from monai.transforms import Compose, EnsureChannelFirstd

    from scripts.data.intensity import NormalizeRadiographd

    pixels, _ = asymmetric_case(60, 40)
    shown = write_test_dicom(tmp_path / "shown.dcm", pixels, jpeg_quality=None)
    stored = _edited(write_test_dicom(tmp_path / "inverse.dcm", 255 - pixels, jpeg_quality=None),
                     PresentationLUTShape="INVERSE")
    loading = Compose([LoadRadiographd("image"), EnsureChannelFirstd("image"), NormalizeRadiographd("image", mode="bits")])
    expected = loading({"image": str(shown)})["image"]
    np.testing.assert_allclose(loading({"image": str(stored)})["image"], expected, atol=1e-6)
    assert float(expected.max()) > float(expected.min())


def test_ctrl_c_prints_one_line_and_ends_the_process_as_sigint_does():
    code = "import sys; sys.path.insert(0, sys.argv[1]); from scripts.utils.errors import short_tracebacks\n" \
           "short_tracebacks(); raise KeyboardInterrupt"
    result = subprocess.run([sys.executable, "-c", code, str(REPO)], capture_output=True, text=True, timeout=60)
    assert result.stderr == "interrupted (Ctrl-C)\n" and result.returncode in (-2, 130)


def test_a_source_without_its_study_uid_costs_only_its_seg_with_the_reason(tmp_path):
    import pydicom

    items = _items(tmp_path / "a", ["1.1", "1.2"])
    source = Path(items[0]["image"].meta["filename_or_obj"])
    ds = pydicom.dcmread(source)
    del ds.StudyInstanceUID
    ds.save_as(source)
    summary = _write_run(tmp_path / "out", items)
    assert summary["processed"] == 2 and summary["errors"] == 1
    assert ("DICOM SEG not written: ValueError: the source has no StudyInstanceUID: a SEG must reference its image, "
            "series and study") in (tmp_path / "out" / "errors.csv").read_text()


def test_a_radiograph_without_a_photometric_interpretation_is_named_as_such(tmp_path):
    path = _edited(write_test_dicom(tmp_path / "a.dcm", np.zeros((16, 32), np.uint8), jpeg_quality=None),
                   PhotometricInterpretation=None)
    with pytest.raises((ValueError, RuntimeError)) as raised:
        load(path)
    error = raised.value.__cause__ if isinstance(raised.value, RuntimeError) and raised.value.__cause__ else raised.value
    assert f"{path}: no PhotometricInterpretation" in str(error)


def test_a_monochrome1_radiograph_with_the_inverse_shape_the_standard_gives_it_is_inverted_once(tmp_path):
    from monai.transforms import Compose, EnsureChannelFirstd

    from scripts.data.intensity import NormalizeRadiographd

    pixels, _ = asymmetric_case(60, 40)
    shown = write_test_dicom(tmp_path / "shown.dcm", pixels, jpeg_quality=None)
    mono1 = write_test_dicom(tmp_path / "mono1.dcm", 255 - pixels, photometric="MONOCHROME1", jpeg_quality=None)
    _edited(mono1, PresentationLUTShape="INVERSE")
    loading = Compose([LoadRadiographd("image"), EnsureChannelFirstd("image"), NormalizeRadiographd("image", mode="bits")])
    np.testing.assert_allclose(loading({"image": str(mono1)})["image"], loading({"image": str(shown)})["image"], atol=1e-6)


def test_a_lone_surrogate_in_a_reason_is_written_not_a_crash(tmp_path):
    from scripts.utils.files import write_reasons_csv

    write_reasons_csv(tmp_path / "errors.csv", [("/in/a.dcm", "odd \ud800 text")])
    assert "odd \\ud800 text" in (tmp_path / "errors.csv").read_text(encoding="utf-8")


@pytest.mark.parametrize("uid", ["1.1\x859.9", "1.1\u20289.9", "1.1\x7f"], ids=["NEL", "line-separator", "DEL"])
def test_unicode_line_breaks_and_controls_are_refused_in_an_image_id(uid):
    from scripts.siim.image_id import dicom_image_id

    with pytest.raises(ValueError, match="holds control characters"):
        dicom_image_id("/in/x.dcm", header={"SOPInstanceUID": uid})


def test_a_one_pixel_image_with_its_pad_byte_is_one_frame(tmp_path):
    assert load(write_test_dicom(tmp_path / "a.dcm", np.full((1, 1), 7, np.uint8), jpeg_quality=None)).shape == (1, 1)
