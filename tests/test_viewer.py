"""The web viewer (scripts/serving/viewer.py): the bundle's inference behind a JSON API and one page, with bad
uploads refused clearly, uploads kept apart, and a real browser driving the page."""

import csv
import io
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from scripts.inference.dicom_seg import read_segmentation_mask
from scripts.inference.predictions import read_predictions
from scripts.serving.viewer import create_app
from scripts.serving.viewer_pipeline import ViewerPipeline
from scripts.siim import rle
from scripts.siim.rle_csv import read_rle_csv
from scripts.synthetic.dataset import generate_dataset
from scripts.utils.files import safe_name
from tests.conftest import COMMON, REPO, bundle_env, config_files, run_bundle
from tests.helpers import write_test_dicom
from tests.hostile import jpeg_bomb, rgb_dicom

BRIGHTNESS = str(REPO / "tests" / "configs" / "inference_brightness.json")
SECRET_NAME, SECRET_ID = "SECRET^PATIENT-NAME", "PATIENT-ID-4711"
MAX_UPLOAD_MB = 1


@pytest.fixture(scope="module")
def checkpoint(brightness_ckpt) -> Path:
    return brightness_ckpt


@pytest.fixture(scope="module")
def dicoms(tmp_path_factory) -> list[Path]:
    """Four demo-like synthetic radiographs (256 x 256, visible pneumothoraces) in the SIIM layout, and an all-dark
    one, which the stand-in network calls negative (last in the worklist, no SEG)."""
    root = tmp_path_factory.mktemp("viewer_siim")
    generate_dataset(root, n=4, seed=11, rows=256, cols=256, positive_share=0.5, lesion_contrast=25, lesion_scale=3)
    dark = root / "dicom-images-train" / "dark" / "series" / "dark.dcm"
    write_test_dicom(
        dark, np.zeros((256, 256), np.uint8), sop_instance_uid="1.2.826.0.1.3680043.8.498.77", jpeg_quality=None
    )
    files = sorted((root / "dicom-images-train").rglob("*.dcm"))
    assert len(files) == 5 and files[-1] == dark
    return files


@pytest.fixture(scope="module")
def results(dicoms, checkpoint, tmp_path_factory) -> Path:
    """The bundle's own inference (``monai.bundle run ... inference.json``) on those radiographs, with overlays and
    heatmaps."""
    out = tmp_path_factory.mktemp("viewer_results") / "inference"
    run_bundle([
        "run", "--config_file", config_files(COMMON, "configs/inference.json", BRIGHTNESS),
        "--meta_file", "configs/metadata.json", "--logging_file", "configs/logging.conf", "--bundle_root", str(REPO),
        "--dataset_dir", str(dicoms[0].parents[2]), "--output_dir", str(out), "--ckpt_dir", str(checkpoint),
        "--write_overlays", "true", "--write_heatmaps", "true",
    ])  # fmt: skip
    return out


@pytest.fixture(scope="module")
def pipeline(checkpoint) -> ViewerPipeline:
    return ViewerPipeline(checkpoint, [BRIGHTNESS])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("viewer_work")


@pytest.fixture(scope="module")
def client(pipeline, results, workdir) -> TestClient:
    return TestClient(create_app(pipeline, results=results, workdir=workdir, max_upload_mb=MAX_UPLOAD_MB))


def _upload(client: TestClient, path: Path, name: str | None = None):
    return client.post("/api/predict", files={"file": (name or path.name, path.read_bytes(), "application/dicom")})


def _png(client: TestClient, link: str) -> np.ndarray:
    response = client.get(link)
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    return np.asarray(Image.open(io.BytesIO(response.content)))


def _bundle_outputs(results: Path) -> dict[str, dict]:
    """ImageId -> what the bundle's inference wrote for it: probability, area, RLE, mask."""
    rles = read_rle_csv(results / "submission.csv").annotations
    return {
        p.image_id: {
            "probability": p.probability,
            "area": p.area_px,
            "rle": (rles[p.image_id] or [rle.EMPTY])[0],
            "mask": np.asarray(Image.open(results / "masks" / f"{safe_name(p.image_id)}.png")),
        }
        for p in read_predictions(results / "predictions.csv")
    }


def test_an_upload_gives_its_probability_area_rle_and_files(client, dicoms):
    header = pydicom.dcmread(dicoms[0], stop_before_pixels=True)
    response = _upload(client, dicoms[0])
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["image_id"] == header.SOPInstanceUID
    mask = _png(client, body["links"]["mask"]) > 0
    assert mask.shape == (header.Rows, header.Columns)
    assert body["area"] == int(mask.sum()) > 0 and body["positive"] is True
    assert np.array_equal(rle.decode(body["rle"], mask.shape), mask)
    assert 0.5 < body["probability"] <= 1.0  # no gate: the mask's largest pixel probability
    assert _png(client, body["links"]["overlay"]).shape == (header.Rows, header.Columns, 3)
    assert _png(client, body["links"]["heatmap"]).shape == (header.Rows, header.Columns, 3)
    row = client.get(body["links"]["rle"]).text.splitlines()
    assert row == ["ImageId,EncodedPixels", f"{header.SOPInstanceUID},{body['rle']}"]
    seg = client.get(body["links"]["seg"])
    assert seg.headers["content-type"] == "application/dicom"
    assert pydicom.dcmread(io.BytesIO(seg.content)).Modality == "SEG"


def test_the_viewer_gives_exactly_what_bundle_inference_gives(client, dicoms, results):
    expected = _bundle_outputs(results)
    assert len(expected) == len(dicoms)
    for path in dicoms:
        body = _upload(client, path).json()
        truth = expected[body["image_id"]]
        assert body["rle"] == truth["rle"] and body["area"] == truth["area"]
        assert body["probability"] == pytest.approx(truth["probability"], abs=1e-6)  # predictions.csv keeps 6 digits
        assert np.array_equal(_png(client, body["links"]["mask"]), truth["mask"])


def _truncated_dicom(path: Path) -> Path:
    write_test_dicom(path, np.full((200, 200), 90, np.uint8), sop_instance_uid="1.2.3.998", jpeg_quality=None)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 20000])
    return path


def _lateral_dicom(path: Path) -> Path:
    return write_test_dicom(path, np.full((64, 64), 90, np.uint8), sop_instance_uid="1.2.3.997", view_position="LL")


def _holding(content: bytes):
    """A builder of a file holding ``content``."""

    def build(path: Path) -> Path:
        path.write_bytes(content)
        return path

    return build


BAD_UPLOADS = {
    "garbage": (_holding(b"this is not a DICOM file"), 415, "not a DICOM file"),
    "png": (_holding(b"\x89PNG\r\n\x1a\n" + bytes(64)), 415, "a PNG image, not DICOM"),
    "truncated": (_truncated_dicom, 422, "pixel data cannot be decoded"),
    "rgb": (rgb_dicom, 422, "samples per pixel"),
    "lateral view": (_lateral_dicom, 422, "ViewPosition LL"),
    "huge in pixels": (jpeg_bomb, 413, "max_image_pixels"),
    "huge in bytes": (_holding(bytes(MAX_UPLOAD_MB * (1 << 20) + 1)), 413, "--max_upload_mb"),
}


@pytest.mark.parametrize("kind", list(BAD_UPLOADS))
def test_a_bad_upload_is_refused_with_a_status_and_a_reason_and_the_server_goes_on(kind, client, dicoms, tmp_path):
    build, status, reason = BAD_UPLOADS[kind]
    response = _upload(client, build(tmp_path / "upload.dcm"), name="mine.dcm")
    assert response.status_code == status, response.text
    assert reason in response.json()["detail"]
    assert str(tmp_path) not in response.json()["detail"]
    assert _upload(client, dicoms[1]).status_code == 200


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_an_upload_over_the_bound_is_refused_before_anything_is_written(declared, client, workdir):
    before = set((workdir / "uploads").iterdir())
    chunks = [b"x" * (1 << 20)] * (3 * MAX_UPLOAD_MB)

    def stream():  # a chunked body: no Content-Length to refuse it by
        yield from chunks

    response = client.post(
        "/api/predict",
        content=b"".join(chunks) if declared else stream(),
        headers={"content-type": "multipart/form-data; boundary=b"},
    )
    assert response.status_code == 413 and "--max_upload_mb" in response.json()["detail"]
    assert set((workdir / "uploads").iterdir()) == before


def test_the_worklist_lists_the_results_folder_most_probable_first_with_its_files(client, results):
    body = client.get("/api/worklist").json()
    assert body["folder"] == results.name
    ranked = read_predictions(results / "worklist.csv")
    assert [image["image_id"] for image in body["images"]] == [p.image_id for p in ranked]
    probabilities = [image["probability"] for image in body["images"]]
    assert probabilities == sorted(probabilities, reverse=True)
    assert probabilities[0] > 0.5 > probabilities[-1] and body["images"][-1]["area"] == 0  # the dark image last
    expected = _bundle_outputs(results)
    for image in body["images"]:
        truth = expected[image["image_id"]]
        assert image["area"] == truth["area"] and image["rle"] == truth["rle"]
        assert np.array_equal(_png(client, image["links"]["mask"]), truth["mask"])
        assert _png(client, image["links"]["overlay"]).shape == (*truth["mask"].shape, 3)
        assert _png(client, image["links"]["heatmap"]).shape == (*truth["mask"].shape, 3)
        assert (image["links"]["seg"] is None) == (truth["area"] == 0)
        rows = list(csv.reader(io.StringIO(client.get(image["links"]["rle"]).text)))
        assert rows == [["ImageId", "EncodedPixels"], [image["image_id"], truth["rle"]]]


def test_the_page_is_one_html_file_that_calls_the_api(client):
    response = client.get("/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    for needed in ('id="upload-form"', 'type="file"', "multiple", 'id="worklist"', "/api/predict", "/api/worklist"):
        assert needed in response.text
    assert client.get("/docs").status_code == 200
    assert "/api/predict" in client.get("/openapi.json").json()["paths"]


def test_without_results_there_is_no_worklist_but_uploads_work(pipeline, dicoms, tmp_path):
    bare = TestClient(create_app(pipeline, workdir=tmp_path))
    response = bare.get("/api/worklist")
    assert response.status_code == 404 and "--results" in response.json()["detail"]
    assert bare.get("/api/info").json()["worklist"] is False
    assert _upload(bare, dicoms[0]).status_code == 200


def test_files_are_served_only_from_their_upload_and_only_results(client, dicoms):
    links = _upload(client, dicoms[0]).json()["links"]
    token = links["mask"].split("/")[2]
    assert client.get(f"/files/{token}/upload.dcm").status_code == 404  # the patient's file is not kept
    assert client.get(f"/files/{token}/../../uploads").status_code == 404
    assert client.get(f"/files/{token}/%2e%2e/%2e%2e/x").status_code == 404
    assert client.get(f"/files/not-a-token/{links['mask'].split('/', 3)[3]}").status_code == 404
    assert client.get("/results/%2e%2e/x").status_code == 404


def test_patient_name_and_id_stay_out_of_the_logs(client, tmp_path, caplog):
    path = write_test_dicom(tmp_path / f"{SECRET_ID}.dcm", np.full((64, 64), 200, np.uint8),
                            sop_instance_uid="1.2.826.0.1.3680043.8.498.4711", patient_id=SECRET_ID)  # fmt: skip
    ds = pydicom.dcmread(path)
    ds.PatientName = SECRET_NAME
    ds.save_as(path)
    with caplog.at_level(logging.DEBUG):
        assert _upload(client, path, name=f"{SECRET_NAME}.dcm").status_code == 200
        assert client.post("/api/predict", files={"file": (f"{SECRET_ID}.dcm", b"junk")}).status_code == 415
    assert "1.2.826.0.1.3680043.8.498.4711" in caplog.text  # what the log names an upload by
    for secret in (SECRET_NAME, SECRET_ID, "PATIENT-NAME", "4711.dcm"):
        assert secret not in caplog.text


def test_concurrent_uploads_each_get_their_own_correct_result(client, dicoms, results):
    expected = _bundle_outputs(results)
    uploads = dicoms * 2  # the same image twice too: two uploads, two folders
    with ThreadPoolExecutor(max_workers=len(uploads)) as pool:
        bodies = list(pool.map(lambda path: _upload(client, path).json(), uploads))
    for path, body in zip(uploads, bodies):
        uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
        assert body["image_id"] == uid and body["rle"] == expected[uid]["rle"]
        assert np.array_equal(_png(client, body["links"]["mask"]), expected[uid]["mask"])
    tokens = [body["links"]["mask"].split("/")[2] for body in bodies]
    assert len(set(tokens)) == len(uploads)
    assert not any(body["image_id"] in token for body, token in zip(bodies, tokens))


def test_the_oldest_uploads_are_removed_beyond_keep(pipeline, dicoms, tmp_path):
    small = TestClient(create_app(pipeline, workdir=tmp_path, keep=2))
    links = [_upload(small, dicoms[0]).json()["links"]["mask"] for _ in range(3)]
    assert [small.get(link).status_code for link in links] == [404, 200, 200]
    assert len(list((tmp_path / "uploads").iterdir())) == 2


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture()
def viewer_server(checkpoint, results, tmp_path):
    """``python -m scripts.serving.viewer`` as a real server on a free port of 127.0.0.1."""
    port = _free_port()
    command = [sys.executable, "-m", "scripts.serving.viewer", "--ckpt_dir", str(checkpoint), "--override", BRIGHTNESS,
               "--results", str(results), "--port", str(port), "--workdir", str(tmp_path / "work")]  # fmt: skip
    with open(tmp_path / "server.log", "w") as log:
        server = subprocess.Popen(command, cwd=REPO, env=bundle_env(), stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{url}/api/info", timeout=2):
                break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                raise AssertionError(f"the viewer did not start:\n{(tmp_path / 'server.log').read_text()[-4000:]}")
            time.sleep(0.3)
    yield url
    server.send_signal(signal.SIGINT)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()


CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip


@pytest.mark.slow
def test_a_browser_uploads_sees_the_result_downloads_the_seg_and_browses_the_worklist(
    viewer_server, dicoms, results, tmp_path
):
    from playwright.sync_api import sync_playwright

    shots = Path(os.environ.get("VIEWER_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    expected = _bundle_outputs(results)
    chosen = max(dicoms, key=lambda p: expected[pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID]["area"])
    header = pydicom.dcmread(chosen, stop_before_pixels=True)
    truth = expected[header.SOPInstanceUID]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS, headless=True,
            accept_downloads=True, viewport={"width": 1280, "height": 800},
        )  # fmt: skip
        try:
            page = browser.new_page()
            page.goto(viewer_server)
            page.set_input_files("#files", str(chosen))
            page.click("#upload-form button[type=submit]")
            card = page.locator(f"#uploads article.result[data-image-id='{header.SOPInstanceUID}']")
            card.wait_for(timeout=60000)
            page.wait_for_function(
                "() => { const i = document.querySelector('#uploads img.overlay'); return i && i.complete && i.naturalWidth > 0; }"
            )
            assert card.locator(".probability").inner_text() == f"probability {truth['probability']:.3f}"
            assert card.locator(".area").inner_text() == f"area {truth['area']} px"
            size = page.evaluate(
                "() => { const i = document.querySelector('#uploads img.overlay'); return [i.naturalHeight, i.naturalWidth]; }"
            )
            assert size == [header.Rows, header.Columns]
            page.wait_for_function(
                "() => { const i = document.querySelector('#uploads img.heatmap'); return i && i.complete && i.naturalWidth > 0; }"
            )
            page.screenshot(path=str(shots / "viewer_upload.png"), full_page=True)
            with page.expect_download() as download:
                card.locator("a.seg").click()
            seg_path = tmp_path / "downloaded_seg.dcm"
            download.value.save_as(seg_path)
            mask_link = card.locator("a.mask").get_attribute("href")
            with urllib.request.urlopen(viewer_server + mask_link) as response:
                mask = np.asarray(Image.open(io.BytesIO(response.read()))) > 0
            assert np.array_equal(read_segmentation_mask(seg_path).astype(bool), mask)
            assert np.array_equal(mask, truth["mask"] > 0)

            page.set_input_files(
                "#files", files=[{"name": "notes.dcm", "mimeType": "application/dicom", "buffer": b"not an image"}]
            )
            page.click("#upload-form button[type=submit]")
            error = page.locator("#uploads article.result.error .error-message")
            error.wait_for(timeout=30000)
            assert re.search(r"Rejected \(415\).*not a DICOM file", error.inner_text())

            page.goto(viewer_server)
            thumbs = page.locator("#worklist a.thumb")
            thumbs.first.wait_for(timeout=30000)
            assert thumbs.count() == len(expected)
            shown = [float(text) for text in thumbs.locator(".probability").all_inner_texts()]
            assert shown == sorted(shown, reverse=True) and shown[0] > shown[-1]
            top = thumbs.first.get_attribute("title")
            thumbs.first.click()
            full = page.locator(f"#full-view article.result[data-image-id='{top}']")
            full.wait_for(timeout=30000)
            assert full.locator("h3").inner_text() == top
            page.wait_for_function(
                "() => { const i = document.querySelector('#full-view img.overlay'); return i && i.complete && i.naturalWidth > 0; }"
            )
            assert full.locator(".area").inner_text() == f"area {expected[top]['area']} px"
            page.screenshot(path=str(shots / "viewer_worklist.png"), full_page=True)
        finally:
            browser.close()
    assert (shots / "viewer_upload.png").stat().st_size > 0 and (shots / "viewer_worklist.png").stat().st_size > 0
