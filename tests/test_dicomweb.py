"""Inference next to a PACS (scripts/serving/dicomweb.py): against a real Orthanc with its DICOMweb plugin, the
command processes exactly the frontal CR/DX radiographs, stores their SEGs in the right study, does nothing twice,
and survives a server that stops mid-run; its credentials, ledger and selection rules are checked without one."""

import http.server
import io
import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.encaps import encapsulate

from scripts.inference.dicom_seg import read_segmentation_mask
from scripts.serving.dicomweb import known_problem, query_filters
from scripts.serving.ledger import Ledger
from scripts.serving.pacs import DicomwebServer, InstanceRef, ServerError, read_credentials
from scripts.utils.files import safe_name
from scripts.utils.processes import ends_with_this_process
from tests.conftest import REPO, bundle_env
from tests.helpers import asymmetric_case, write_test_dicom
from tests.orthanc import Orthanc

BRIGHTNESS = str(REPO / "tests" / "configs" / "inference_brightness.json")
USER, PASSWORD = "bundle", "not-in-any-log-7731"
RULES = {"modalities": ("CR", "DX"), "view_positions": ("PA", "AP", ""), "body_parts": ("CHEST", "THORAX", ""),
         "max_frames": 1}  # fmt: skip
UID = "1.2.826.0.1.3680043.8.498.{}"


# -- without a server ---------------------------------------------------------------------------------------------


def test_credentials_come_from_the_environment_or_a_file_and_never_show(tmp_path):
    basic = read_credentials({"DICOMWEB_USERNAME": "u", "DICOMWEB_PASSWORD": "p4ss"})
    assert (basic.username, basic.password) == ("u", "p4ss") and "p4ss" not in repr(basic)
    assert read_credentials({"DICOMWEB_TOKEN": "t0k"}).token == "t0k"
    assert read_credentials({}) is None
    with pytest.raises(ValueError, match="a username needs a password"):
        read_credentials({"DICOMWEB_USERNAME": "u"})
    token_file = tmp_path / "auth.json"
    token_file.write_text(json.dumps({"token": "abc"}))
    assert read_credentials({}, auth_file=token_file).token == "abc"
    assert read_credentials({"DICOMWEB_AUTH_FILE": str(token_file)}).token == "abc"
    broken = tmp_path / "broken.json"
    broken.write_text('{"password": "s3cr3t-in-file"')
    with pytest.raises(ValueError, match="broken.json: cannot read") as error:
        read_credentials({}, auth_file=broken)
    assert "s3cr3t" not in str(error.value)
    empty = tmp_path / "empty.json"
    empty.write_text("{}")
    with pytest.raises(ValueError, match="neither a token nor a username"):
        read_credentials({}, auth_file=empty)


def test_a_url_with_credentials_in_it_is_refused():
    with pytest.raises(ValueError, match="credentials do not go in the URL") as error:
        DicomwebServer("http://user:pw-in-url@127.0.0.1:1/dicom-web")
    assert "pw-in-url" not in str(error.value)
    with pytest.raises(ValueError, match="not an http"):
        DicomwebServer("ftp://127.0.0.1/dicom-web")


def test_the_ledger_keeps_the_last_state_and_drops_a_torn_last_line(tmp_path):
    path = tmp_path / "ledger.jsonl"
    ledger = Ledger(path)
    ledger.record("1.1", "1", "1.0", "inferred", seg_file="batches/a/seg/1.1.dcm")
    ledger.record("1.1", "1", "1.0", "stored", seg_uid="9.9")
    ledger.record("1.2", "1", "1.0", "failed", reason="HTTP 404 Not Found")
    with open(path, "ab") as handle:  # a run killed in the middle of a record
        handle.write(b'{"sop": "1.3", "stat')
    reader = Ledger(path)  # a reader leaves the torn line out, and the file as it is (it may be being written)
    assert reader.state("1.3") is None and path.read_bytes().endswith(b'"stat')
    again = Ledger(path, repair=True)  # the writer, which holds the lock, cuts it off
    assert again.state("1.1")["status"] == "stored" and again.state("1.1")["seg_uid"] == "9.9"
    assert again.is_done("1.1") and again.is_done("1.2") and not again.is_done("1.2", retry_failed=True)
    assert again.state("1.3") is None and path.read_bytes().endswith(b"\n")
    again.record("1.3", "1", "1.0", "negative", probability=0.1)
    assert Ledger(path).counts() == {"stored": 1, "failed": 1, "negative": 1}
    path.write_text('{"sop": "1.1", "status": "stored"}\nnot a record\n{"sop": "1.2", "status": "stored"}\n')
    with pytest.raises(ValueError, match="ledger.jsonl, line 2: not a ledger record"):
        Ledger(path)


def test_the_search_filters_and_the_rules_on_what_a_search_returns():
    assert query_filters("DX", None) == {"Modality": "DX"}
    from datetime import date

    assert query_filters("CR", date(2026, 1, 2)) == {"Modality": "CR", "StudyDate": "20260102-"}
    lateral = pydicom.Dataset()
    lateral.Modality, lateral.ViewPosition = "CR", "LL"
    assert "ViewPosition LL" in known_problem(lateral, RULES)
    bare = pydicom.Dataset()  # a server that returns none of the attributes: judged on the fetched header
    assert known_problem(bare, {**RULES, "body_parts": ("CHEST",)}) is None


class Misbehaving(http.server.BaseHTTPRequestHandler):
    """A DICOMweb server gone wrong, by path: always 503, a body that is not JSON, too slow to answer."""

    requests = 0

    def do_GET(self):
        type(self).requests += 1
        if self.path.startswith("/slow"):
            time.sleep(1.5)
        status, body = (503, b"busy") if self.path.startswith("/unavailable") else (200, b"<html>not json</html>")
        if self.path.startswith(("/capped", "/unpaged")):  # 5 instances and a malformed result
            offset = int(re.search(r"offset=(\d+)", self.path).group(1))
            found = [_qido(n) for n in range(5)] + [{**_qido(9), "00280008": {"vr": "IS", "Value": ["ab"]}}]
            # /capped: 2 per page whatever was asked; /unpaged: everything, whatever the offset
            body = json.dumps(found[offset : offset + 2] if self.path.startswith("/capped") else found).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(body)))
        try:
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up waiting
            pass

    def log_message(self, *args):
        pass


def _qido(number: int) -> dict:
    uid = UID.format(300 + number)
    return {"0020000D": {"vr": "UI", "Value": [uid + ".1"]}, "0020000E": {"vr": "UI", "Value": [uid + ".2"]},
            "00080018": {"vr": "UI", "Value": [uid]}, "00080060": {"vr": "CS", "Value": ["CR"]}}  # fmt: skip


@pytest.fixture
def misbehaving():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Misbehaving)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Misbehaving.requests = 0
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_failing_slow_or_garbled_server_is_retried_then_named_clearly(misbehaving):
    unavailable = DicomwebServer(f"{misbehaving}/unavailable", retries=2, backoff=0.05)
    with pytest.raises(ServerError, match=r"/unavailable: search for instances \(Modality=CR\): HTTP 503 .*after 3 tries"):
        list(unavailable.instances({"Modality": "CR"}))
    assert Misbehaving.requests == 3
    garbled = DicomwebServer(f"{misbehaving}/garbled", retries=0)
    with pytest.raises(ServerError, match="the answer is not valid DICOMweb"):
        list(garbled.instances({"Modality": "CR"}))
    slow = DicomwebServer(f"{misbehaving}/slow", retries=1, backoff=0.05, timeout=0.3)
    with pytest.raises(ServerError, match=r"no answer \(timed out\) after 2 tries"):
        list(slow.instances({"Modality": "CR"}))
    expected = [UID.format(300 + n) for n in range(5)]
    for kind in ("capped", "unpaged"):  # pages smaller than asked, or limit and offset ignored: each found once
        server = DicomwebServer(f"{misbehaving}/{kind}", retries=0)
        assert [ref.sop for ref in server.instances({"Modality": "CR"}, page_size=500)] == expected
    ref = InstanceRef("1.2", "1.2.3", "1.2.3.4", pydicom.Dataset())
    with pytest.raises(ServerError, match="fetch instance 1.2.3.4: HTTP 503"):  # a server error stops the run
        unavailable.fetch(ref, Path("unused.dcm"))


# -- against Orthanc ----------------------------------------------------------------------------------------------


def radiographs(folder: Path) -> dict[str, Path]:
    """Frontal CR and DX films with a bright, asymmetric finding (the stand-in network's positive), a dark frontal
    film (negative), a lateral view, a CT-like image, and a frontal film whose JPEG data is garbage."""
    pixels, _ = asymmetric_case(160, 120)
    files = {}

    def write(name, number, image, jpeg=None, **tags):
        path = write_test_dicom(folder / f"{name}.dcm", image, sop_instance_uid=UID.format(number), jpeg_quality=jpeg)
        dataset = pydicom.dcmread(path)
        for keyword, value in tags.items():
            setattr(dataset, keyword, value)
        dataset.save_as(path)
        files[name] = path

    write("cr_pa", 101, pixels, StudyDate="20260301")
    write("dx_ap", 102, np.fliplr(pixels).copy(), Modality="DX", ViewPosition="AP")
    write("cr_dark", 103, np.full((160, 120), 10, np.uint8))
    write("cr_lateral", 104, pixels, ViewPosition="LL")
    write("ct", 105, pixels, Modality="CT")
    write("cr_corrupt", 106, pixels, jpeg=90)
    corrupt = pydicom.dcmread(files["cr_corrupt"])
    corrupt.PixelData = encapsulate([b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8])
    corrupt.save_as(files["cr_corrupt"])
    return files


@pytest.fixture(scope="module")
def checkpoint(brightness_ckpt) -> Path:
    return brightness_ckpt


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    """Orthanc with authentication, holding the films of :func:`radiographs`."""
    folder = tmp_path_factory.mktemp("orthanc")
    server = Orthanc(folder / "server", users={USER: PASSWORD}).start()
    try:
        files = radiographs(folder / "films")
        for path in files.values():
            server.upload(path)
        yield server, files
    finally:
        server.stop()


def poll(url: str, output_dir: Path, checkpoint: Path, *extra: str, password: str = PASSWORD, wait: bool = True):
    command = [sys.executable, "-m", "scripts.serving.dicomweb", "--url", url, "--output_dir", str(output_dir),
               "--ckpt_dir", str(checkpoint), "--override", BRIGHTNESS, *extra]  # fmt: skip
    env = {**bundle_env(), "DICOMWEB_USERNAME": USER, "DICOMWEB_PASSWORD": password}
    if not wait:
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=ends_with_this_process())  # fmt: skip
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
                          preexec_fn=ends_with_this_process())  # fmt: skip


def states(output_dir: Path) -> dict[str, dict]:
    return Ledger(output_dir / "ledger.jsonl").states


def stored_segs(server: Orthanc) -> dict[str, tuple[pydicom.Dataset, bytes]]:
    """The SEGs on the server (as read and as stored), by the SOPInstanceUID of the image each references."""
    segs = {}
    for orthanc_id in server.find(Modality="SEG"):
        stored = server.dicom(orthanc_id)
        seg = pydicom.dcmread(io.BytesIO(stored))
        referenced = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
        assert str(referenced) not in segs, f"two SEGs reference {referenced}"
        segs[str(referenced)] = seg, stored
    return segs


@pytest.mark.slow
def test_it_processes_the_frontal_radiographs_stores_their_segs_and_does_nothing_twice(pacs, checkpoint, tmp_path):
    server, files = pacs
    before = server.count()
    out = tmp_path / "out"
    result = poll(server.dicomweb, out, checkpoint)
    assert result.returncode == 0, result.stderr[-3000:]
    uid = {name: pydicom.dcmread(path, stop_before_pixels=True) for name, path in files.items()}
    ledger = states(out)
    status = {name: ledger[str(header.SOPInstanceUID)]["status"] for name, header in uid.items()
              if str(header.SOPInstanceUID) in ledger}  # fmt: skip
    # the CT is never asked for (the search filters by modality); the lateral view is left out by the rules
    assert status == {"cr_pa": "stored", "dx_ap": "stored", "cr_dark": "negative", "cr_lateral": "skipped",
                      "cr_corrupt": "failed"}  # fmt: skip
    assert "ViewPosition LL" in ledger[str(uid["cr_lateral"].SOPInstanceUID)]["reason"]
    assert ledger[str(uid["cr_corrupt"].SOPInstanceUID)]["reason"]
    assert "2 stored, 1 negative, 1 skipped, 1 failed" in result.stdout

    segs = stored_segs(server)
    assert sorted(segs) == sorted(str(uid[name].SOPInstanceUID) for name in ("cr_pa", "dx_ap"))
    for name in ("cr_pa", "dx_ap"):
        source, (seg, stored) = uid[name], segs[str(uid[name].SOPInstanceUID)]
        assert seg.StudyInstanceUID == source.StudyInstanceUID
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
        record = ledger[str(source.SOPInstanceUID)]
        assert record["seg_uid"] == seg.SOPInstanceUID and record["probability"] > 0.5
        local = out / "batches" / record["batch"] / "masks" / f"{safe_name(str(source.SOPInstanceUID))}.png"
        np.testing.assert_array_equal(read_segmentation_mask(io.BytesIO(stored)) > 0, np.asarray(Image.open(local)) > 0)
        _, expected = asymmetric_case(160, 120)
        np.testing.assert_array_equal(np.asarray(Image.open(local)) > 0, expected if name == "cr_pa" else np.fliplr(expected))
    assert server.count() == before + 2
    assert not (out / "incoming").exists()  # the fetched films are not kept unless asked

    again = poll(server.dicomweb, out, checkpoint)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "0 stored" in again.stdout and "already done" in again.stdout
    assert server.count() == before + 2 and len(stored_segs(server)) == 2

    # the password is nowhere: not in the output, the ledger or any file written
    for text in (result.stdout, result.stderr, again.stdout, again.stderr):
        assert PASSWORD not in text
    for path in out.rglob("*"):
        if path.is_file():
            assert PASSWORD.encode() not in path.read_bytes(), path


@pytest.mark.slow
def test_filters_and_refused_credentials(pacs, checkpoint, tmp_path):
    server, files = pacs
    since = poll(server.dicomweb, tmp_path / "since", checkpoint, "--since", "2026-01-01", "--modality", "CR")
    assert since.returncode == 0, since.stderr[-3000:]
    cr_pa = str(pydicom.dcmread(files["cr_pa"], stop_before_pixels=True).SOPInstanceUID)
    assert list(states(tmp_path / "since")) == [cr_pa]
    dx = pydicom.dcmread(files["dx_ap"], stop_before_pixels=True)
    study = poll(server.dicomweb, tmp_path / "study", checkpoint, "--study", str(dx.StudyInstanceUID))
    assert study.returncode == 0 and list(states(tmp_path / "study")) == [str(dx.SOPInstanceUID)]
    refused = poll(server.dicomweb, tmp_path / "refused", checkpoint, password="wrong")
    assert refused.returncode == 1
    assert "HTTP 401" in refused.stderr and "refused the credentials" in refused.stderr
    assert "wrong" not in refused.stderr.replace("refused", "")
    outside = poll(server.dicomweb, tmp_path / "ct", checkpoint, "--modality", "CT")
    assert outside.returncode == 2 and "the input rules admit only CR,DX" in outside.stderr


@pytest.mark.slow
def test_a_server_stopped_mid_run_gives_a_clear_error_and_a_rerun_completes_the_rest(checkpoint, tmp_path):
    server = Orthanc(tmp_path / "server").start()
    try:
        pixels, _ = asymmetric_case(160, 120)
        uids = [UID.format(200 + number) for number in range(6)]
        for number, uid in enumerate(uids):
            server.upload(write_test_dicom(tmp_path / f"{number}.dcm", np.roll(pixels, 3 * number, axis=1),
                                           sop_instance_uid=uid, jpeg_quality=None))  # fmt: skip
        out = tmp_path / "out"
        running = poll(server.dicomweb, out, checkpoint, "--batch_size", "1", "--retries", "1", "--backoff", "0.1",
                       wait=False)  # fmt: skip
        deadline = time.monotonic() + 300
        while not any(r["status"] == "stored" for r in _states_if_any(out)) and running.poll() is None:
            assert time.monotonic() < deadline, "no SEG stored in 300 s"
            time.sleep(0.05)
        server.stop()
        _, stderr = running.communicate(timeout=300)
        assert running.returncode == 1, stderr[-3000:]
        assert f"{server.dicomweb}:" in stderr and "no answer" in stderr and "after 2 tries" in stderr
        assert "run again when the server answers" in stderr
        first = {sop for sop, r in states(out).items() if r["status"] == "stored"}
        assert 1 <= len(first) < len(uids)

        server.start()
        rerun = poll(server.dicomweb, out, checkpoint)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        assert {sop for sop, r in states(out).items() if r["status"] == "stored"} == set(uids)
        assert sorted(stored_segs(server)) == sorted(uids)  # each exactly once
    finally:
        server.stop()


def _states_if_any(output_dir: Path) -> list[dict]:
    try:
        return list(states(output_dir).values()) if (output_dir / "ledger.jsonl").exists() else []
    except ValueError:  # read while a record is being appended
        return []
