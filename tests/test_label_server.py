"""MONAI Label end to end: a real server on a loopback port, driven through its HTTP API, on a folder of DICOMs and
on a DICOMweb server (a real Orthanc, `tests/orthanc.py`): every test runs against both datastores.

It needs the MONAI Label environment (`make setup-label`, which `make test` builds); without it this test fails.
The served network is `tests.helpers.BrightnessNet` (bright = pneumothorax), so every mask has a known answer and
alignment is checked pixel for pixel on a non-square, asymmetric radiograph.
"""

import gzip
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch

from scripts.utils.files import safe_name
from tests.conftest import REPO
from tests.helpers import BrightnessNet, asymmetric_case, write_test_dicom
from tests.orthanc import Orthanc

LABEL_VENV = REPO / ".venv-label"
OVERRIDE = REPO / "tests" / "configs" / "label_brightness.json"
MODEL = "pneumothorax"

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Client:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def request(self, method, path, fields=None, files=None, body=None, timeout=600):
        data, headers = None, {}
        if body is not None:
            data, headers = json.dumps(body).encode(), {"Content-Type": "application/json"}
        elif fields is not None or files is not None:
            boundary = uuid.uuid4().hex
            body = io.BytesIO()
            for name, value in (fields or {}).items():
                body.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
            for name, path_ in (files or {}).items():
                body.write(
                    f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{Path(path_).name}"\r\n'
                    "Content-Type: application/octet-stream\r\n\r\n".encode()
                )
                body.write(Path(path_).read_bytes() + b"\r\n")
            body.write(f"--{boundary}--\r\n".encode())
            data, headers = body.getvalue(), {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        req = urllib.request.Request(self.base + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:  # a status the test reports, with the server's explanation
            return error.code, error.read()

    def json(self, method: str, path: str, **kwargs):
        status, body = self.request(method, path, **kwargs)
        assert status == 200, f"{method} {path}: {status} {body[:1000]!r}"
        return json.loads(body)


@pytest.fixture(scope="module", params=["folder", "dicomweb"])
def server(request, tmp_path_factory):
    monailabel = LABEL_VENV / "bin" / "monailabel"
    assert monailabel.is_file(), f"{monailabel} missing: `make setup-label` builds the MONAI Label environment"
    mode = request.param
    root = tmp_path_factory.mktemp(f"label_{mode}")
    # a SIIM-like tree: the server must get a flat folder of links, and leave this one untouched
    source = root / "siim" / "dicom-images-train"
    pixels, mask = asymmetric_case(300, 220)
    truth = {}
    for k in range(4):
        uid = f"1.2.826.0.1.3680043.8.498.{100 + k}"
        image = np.roll(pixels, 7 * k, axis=0)
        write_test_dicom(source / f"{uid}.2" / f"{uid}.3" / f"{uid}.dcm", image, sop_instance_uid=uid, jpeg_quality=None)
        truth[uid] = np.roll(mask, 7 * k, axis=0)
    (source / "notes.txt").write_text("not a DICOM\n")
    before = sorted(str(p.relative_to(root)) for p in (root / "siim").rglob("*"))
    weights = root / "weights.pt"
    torch.save(BrightnessNet().state_dict(), weights)
    port = _free_port()
    workdir = root / "work"
    log = open(root / "server.log", "w")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    studies, orthanc, ids = str(root / "siim"), None, {safe_name(uid): uid for uid in truth}
    if mode == "dicomweb":  # the same films on Orthanc, beside a CT the datastore must not list
        orthanc = Orthanc(root / "orthanc", users={"label": "label-pass"}).start()
        for path in sorted(source.rglob("*.dcm")):
            orthanc.upload(path)
        ct = write_test_dicom(root / "ct.dcm", pixels, sop_instance_uid="1.2.826.0.1.3680043.8.498.199", jpeg_quality=None)
        dataset = pydicom.dcmread(ct)
        dataset.Modality = "CT"
        dataset.save_as(ct)
        orthanc.upload(ct)
        # the bundle's own result for the last film (an AUTOMATIC SEG, as the DICOMweb command stores): not a label
        from scripts.inference.dicom_seg import write_segmentation

        last = sorted(source.rglob("*.dcm"))[-1]
        write_segmentation(root / "automatic.dcm", pydicom.dcmread(last), np.ones((300, 220), np.uint8))
        orthanc.upload(root / "automatic.dcm")
        studies, ids = orthanc.dicomweb, {f"{uid}.2": uid for uid in truth}  # image ids: SeriesInstanceUIDs
        env.update(DICOMWEB_USERNAME="label", DICOMWEB_PASSWORD="label-pass")
    process = subprocess.Popen(
        [sys.executable, "-m", "scripts.serving.label_server", "--studies", studies, "--weights", str(weights),
         "--override", str(OVERRIDE), "--workdir", str(workdir), "--port", str(port)],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    client = Client(port)
    deadline = time.monotonic() + 300
    while True:
        try:
            client.request("GET", "/info/", timeout=5)
            break
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            if process.poll() is not None or time.monotonic() > deadline:
                log.flush()
                pytest.fail(f"MONAI Label did not start:\n{(root / 'server.log').read_text()[-6000:]}")
            time.sleep(2)
    # truth by image id: the SOPInstanceUID in a folder, the SeriesInstanceUID on a DICOMweb server
    truth = {image_id: truth[uid] for image_id, uid in ids.items()}
    state = {"client": client, "process": process, "root": root, "workdir": workdir, "truth": truth, "log": root / "server.log",
             "before": before, "mode": mode, "orthanc": orthanc, "sops": ids}  # fmt: skip
    yield state
    if process.poll() is None:
        process.kill()
        process.wait()
    log.close()
    if orthanc is not None:
        orthanc.stop()


def _nifti_mask(payload: bytes, tmp_path: Path) -> np.ndarray:
    path = tmp_path / f"{uuid.uuid4().hex}.nii.gz"
    path.write_bytes(payload)
    return np.asanyarray(nib.load(path).dataobj)


def test_info_reports_a_2d_pneumothorax_model(server):
    info = server["client"].json("GET", "/info/")
    model = info["models"][MODEL]
    assert model["dimension"] == 2
    assert model["labels"] == {"pneumothorax": 1}
    assert "random" in info["strategies"]


def test_datastore_serves_every_radiograph_without_touching_the_source(server):
    if server["mode"] == "folder":  # every DICOM, by SOPInstanceUID; the user's folder unchanged
        datastore = server["client"].json("GET", "/datastore/?output=all")
        assert sorted(datastore["objects"]) == sorted(server["truth"])
        after = sorted(str(p.relative_to(server["root"])) for p in (server["root"] / "siim").rglob("*"))
        assert after == server["before"]
    else:  # every CR/DX series of the server, by SeriesInstanceUID, and never the CT
        listed = set()
        for _ in range(len(server["truth"]) + 1):
            # the random strategy draws among the unlabelled images, the least recently drawn first (by far); its
            # weights are whole seconds since an image was last drawn, so draws within one second fail
            listed.add(server["client"].json("POST", "/activelearning/random", body={})["id"])
            time.sleep(1.1)
        assert listed == set(server["truth"])


def test_the_ohif_viewer_and_its_dicomweb_proxy_are_served(server):
    status, page = server["client"].request("GET", "/ohif/")
    assert status == 200 and b"<html" in page.lower() and b"app-config.js" in page
    status, config = server["client"].request("GET", "/ohif/app-config.js")
    assert status == 200 and b"/proxy/dicom/qido" in config
    if server["mode"] == "folder":  # the page is there, but it shows only what a DICOMweb server behind it holds
        status, _ = server["client"].request("GET", "/proxy/dicom/qido/studies")
        assert status != 200
        return
    status, studies = server["client"].request("GET", "/proxy/dicom/qido/studies")
    assert status == 200, studies[:500]
    if studies[:2] == b"\x1f\x8b":  # the proxy passes Orthanc's gzip encoding on
        studies = gzip.decompress(studies)
    found = {str(item["0020000D"]["Value"][0]) for item in json.loads(studies)}
    assert {f"{uid}.1" for uid in server["sops"].values()} <= found  # the films' studies, through the proxy


def test_inference_by_image_id_gives_an_aligned_2d_uint8_label(server, tmp_path):
    uid, truth = next(iter(server["truth"].items()))
    status, payload = server["client"].request("POST", f"/infer/{MODEL}?image={uid}&output=image", fields={"params": "{}"})
    assert status == 200
    label = _nifti_mask(payload, tmp_path)
    assert label.dtype == np.uint8 and label.shape == (220, 300)  # NIfTI x = columns, y = rows, as ITK writes 2-D
    np.testing.assert_array_equal(label.T.astype(bool), truth)


def test_inference_as_png_on_request(server, tmp_path):
    from PIL import Image

    uid, truth = list(server["truth"].items())[2]
    params = json.dumps({"result_extension": ".png"})
    status, payload = server["client"].request("POST", f"/infer/{MODEL}?image={uid}&output=image", fields={"params": params})
    assert status == 200
    png = np.asarray(Image.open(io.BytesIO(payload)))
    assert png.shape == truth.shape  # a PNG is rows x columns, like the DICOM
    np.testing.assert_array_equal(png > 0, truth)


def test_inference_on_an_uploaded_file(server, tmp_path):
    uid, truth = list(server["truth"].items())[1]
    [dicom] = (server["root"] / "siim").rglob(f"{server['sops'][uid]}.dcm")
    status, payload = server["client"].request(
        "POST", f"/infer/{MODEL}?output=image", fields={"params": "{}"}, files={"file": dicom}
    )
    assert status == 200
    np.testing.assert_array_equal(_nifti_mask(payload, tmp_path).T.astype(bool), truth)


def test_saved_labels_train_the_model_and_the_next_inference_reloads_it(server, tmp_path):
    client = server["client"]
    for uid, truth in list(server["truth"].items())[:3]:
        label = tmp_path / f"{uid}.nii.gz"
        nib.save(nib.Nifti1Image(truth.T.astype(np.uint8), np.eye(4)), label)
        client.json("PUT", f"/datastore/label?image={uid}&tag=final", fields={"params": "{}"}, files={"label": label})
    labelled = client.json("GET", "/datastore/?output=all")["objects"]
    assert sum("final" in obj.get("labels", {}) for obj in labelled.values()) == 3
    if server["mode"] == "dicomweb":  # each label is a MANUAL SEG in its image's study, equal to the label sent
        from scripts.inference.dicom_seg import read_segmentation_mask

        orthanc, segs = server["orthanc"], {}
        for orthanc_id in orthanc.find(Modality="SEG"):
            stored = orthanc.dicom(orthanc_id)
            seg = pydicom.dcmread(io.BytesIO(stored))
            segs[str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID)] = (seg, stored)
        automatic = [uid for uid, (seg, _) in segs.items() if seg.SegmentSequence[0].SegmentAlgorithmType == "AUTOMATIC"]
        assert automatic == [list(server["truth"])[3]]
        segs = {uid: seg for uid, seg in segs.items() if uid not in automatic}
        assert sorted(segs) == sorted(list(server["truth"])[:3])
        for image_id, (seg, stored) in segs.items():
            assert seg.SegmentSequence[0].SegmentAlgorithmType == "MANUAL"
            assert seg.StudyInstanceUID == f"{server['sops'][image_id]}.1"
            np.testing.assert_array_equal(read_segmentation_mask(io.BytesIO(stored)).astype(bool), server["truth"][image_id])
    model = server["workdir"] / "bundle" / "models" / "model.pt"
    before = (model.stat().st_mtime_ns, model.read_bytes())
    params = {"max_epochs": 1, "val_split": 0.34, "device": "cpu"}
    status, body = client.request("POST", f"/train/{MODEL}?run_sync=true", body=params, timeout=900)
    assert status == 200, body[:2000]
    assert model.stat().st_mtime_ns != before[0] and model.read_bytes() != before[1], "training wrote no new weights"
    assert torch.load(model, weights_only=True).keys() == BrightnessNet().state_dict().keys()
    uid, truth = list(server["truth"].items())[3]
    status, payload = client.request("POST", f"/infer/{MODEL}?image={uid}&output=image", fields={"params": "{}"})
    assert status == 200
    np.testing.assert_array_equal(_nifti_mask(payload, tmp_path).T.astype(bool), truth)
    assert "Reload model from cache" in server["log"].read_text(), "the server did not reload the new weights"
    # on this CPU the served network runs on OpenVINO, as inference.json runs it: one export per weights
    assert len(list((server["workdir"] / "bundle" / "models" / "onnx").glob("model-*.onnx"))) == 2
    if server["mode"] == "dicomweb":  # the training labels came from the MANUAL SEGs on the server, not the AUTOMATIC
        log = server["log"].read_text()
        for image_id in list(server["truth"])[:3]:
            assert f"training label of {image_id} read from SEG series" in log
        assert f"training label of {list(server['truth'])[3]}" not in log


def test_server_stops_cleanly_on_ctrl_c(server):
    process = server["process"]
    process.send_signal(signal.SIGINT)  # what Ctrl-C sends to the foreground server
    assert process.wait(timeout=60) == 0
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        server["client"].request("GET", "/info/", timeout=5)
