"""The one ImageId rule (scripts/siim/image_id.py): the SOPInstanceUID of the file, else its file name."""

import numpy as np
import pydicom

from scripts.siim.image_id import dicom_image_id, file_stem
from tests.helpers import write_test_dicom

PIXELS = np.full((8, 6), 100, dtype=np.uint8)


def test_the_uid_in_the_file_wins_over_its_name(tmp_path):
    path = write_test_dicom(tmp_path / "IM0001.dcm", PIXELS, sop_instance_uid="1.2.3.4.5", jpeg_quality=None)
    assert dicom_image_id(path) == "1.2.3.4.5"


def test_a_header_already_read_is_used_and_the_file_not_opened_again(tmp_path):
    path = write_test_dicom(tmp_path / "a.dcm", PIXELS, sop_instance_uid="1.2.3.4.5", jpeg_quality=None)
    header = pydicom.dcmread(path, stop_before_pixels=True)
    path.unlink()
    assert dicom_image_id(path, header=header) == "1.2.3.4.5"
    assert dicom_image_id(path, header={"SOPInstanceUID": "9.8.7", "Rows": 8}) == "9.8.7"  # MONAI metadata


def test_an_unreadable_file_or_a_missing_uid_falls_back_to_the_file_stem(tmp_path):
    garbage = tmp_path / "1.2.840.99.dcm"
    garbage.write_bytes(b"not a dicom at all")
    assert dicom_image_id(garbage) == "1.2.840.99"
    assert dicom_image_id(tmp_path / "x.dcm", header={"SOPInstanceUID": "  "}) == "x"


def test_the_stem_drops_only_a_dicom_extension():
    assert file_stem("/data/1.2.840.113619.2.55.dcm") == "1.2.840.113619.2.55"  # not Path.stem's "1.2.840.113619.2"
    assert file_stem("scan.DICOM") == "scan"
    assert file_stem("1.2.840.113619.2.55") == "1.2.840.113619.2.55"


def test_inference_and_the_label_server_name_a_renamed_file_by_its_uid(tmp_path):
    from scripts.serving.label_server import prepare_studies

    write_test_dicom(tmp_path / "in" / "IM0001.dcm", PIXELS, sop_instance_uid="1.2.3.4.5", jpeg_quality=None)
    counts = prepare_studies(tmp_path / "in", tmp_path / "studies")
    assert counts["linked"] == 1 and [p.name for p in (tmp_path / "studies").iterdir()] == ["1.2.3.4.5.dcm"]


def test_the_label_server_does_not_serve_a_file_whose_header_cannot_be_read(tmp_path):
    from scripts.serving.label_server import prepare_studies

    write_test_dicom(tmp_path / "in" / "good.dcm", PIXELS, sop_instance_uid="1.2.3.4.5", jpeg_quality=None)
    (tmp_path / "in" / "broken.dcm").write_text("not a dicom")
    counts = prepare_studies(tmp_path / "in", tmp_path / "studies")
    assert counts["linked"] == 1 and counts["unreadable"] == 1
    assert [p.name for p in (tmp_path / "studies").iterdir()] == ["1.2.3.4.5.dcm"]
