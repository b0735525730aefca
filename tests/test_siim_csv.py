"""Specification of the SIIM annotation CSV reader and writer (scripts/siim/rle_csv.py)."""

import pytest

from scripts.siim.rle_csv import read_rle_csv, rows_from_annotations, write_rle_csv

ID_A = "1.2.276.0.7230010.3.1.4.8323329.1000.1517875165.878027"
ID_B = "1.2.276.0.7230010.3.1.4.8323329.1001.1517875165.878030"
ID_C = "1.2.276.0.7230010.3.1.4.8323329.1002.1517875165.878031"

EXPECTED = {ID_A: [], ID_B: ["175349 7 1013 12", "5 3"], ID_C: ["1 2"]}


def write(tmp_path, text: str, encoding: str = "utf-8"):
    path = tmp_path / "annotations.csv"
    path.write_text(text, encoding=encoding)
    return path


def test_reads_stage1_layout_with_leading_spaces(tmp_path):
    path = write(
        tmp_path,
        f"ImageId, EncodedPixels\n{ID_A}, -1\n{ID_B}, 175349 7 1013 12\n{ID_B}, 5 3\n{ID_C}, 1 2\n",
    )
    result = read_rle_csv(path)
    assert result.annotations == EXPECTED
    assert result.problems == []


def test_reads_stage2_layout(tmp_path):
    path = write(tmp_path, f"ImageId,EncodedPixels\n{ID_A},-1\n{ID_B},175349 7 1013 12\n{ID_B},5 3\n{ID_C},1 2\n")
    assert read_rle_csv(path).annotations == EXPECTED


def test_reads_headerless_sample_with_byte_order_mark(tmp_path):
    path = write(tmp_path, f"{ID_A}, -1\n{ID_B}, 175349 7 1013 12\n{ID_B}, 5 3\n{ID_C}, 1 2\n", encoding="utf-8-sig")
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    result = read_rle_csv(path)
    assert result.annotations == EXPECTED
    assert list(result.annotations)[0] == ID_A  # the BOM is not glued to the first ImageId


def test_positive_ids_are_images_with_annotations(tmp_path):
    path = write(tmp_path, f"ImageId,EncodedPixels\n{ID_A},-1\n{ID_B},5 3\n")
    assert read_rle_csv(path).positive_ids == [ID_B]


def test_reports_image_mixing_minus_one_with_annotations_and_keeps_annotations(tmp_path):
    path = write(tmp_path, f"ImageId,EncodedPixels\n{ID_B},-1\n{ID_B},5 3\n")
    result = read_rle_csv(path)
    assert result.annotations == {ID_B: ["5 3"]}
    assert len(result.problems) == 1 and ID_B in result.problems[0] and "-1" in result.problems[0]


def test_reports_duplicate_row_with_line_number_and_keeps_it_once(tmp_path):
    path = write(tmp_path, f"ImageId,EncodedPixels\n{ID_B},5 3\n{ID_B},5 3\n")
    result = read_rle_csv(path)
    assert result.annotations == {ID_B: ["5 3"]}
    assert result.problems == [f"{path}:3: duplicate row for {ID_B}; kept once"]


@pytest.mark.parametrize(
    "row,why",
    [
        (f"{ID_B},5 3,extra", "expected 2 columns"),
        (f"{ID_B}", "expected 2 columns"),
        (",5 3", "empty ImageId"),
        (f"{ID_B},", "empty EncodedPixels"),
        (f"{ID_B},5 3 1", "odd count"),
        (f"{ID_B},5 x", "non-integer"),
        (f"{ID_B},5 0", "non-positive length"),
    ],
)
def test_reports_unparseable_row_naming_its_line(tmp_path, row, why):
    path = write(tmp_path, f"ImageId,EncodedPixels\n{ID_A},-1\n{row}\n")
    result = read_rle_csv(path)
    assert result.annotations == {ID_A: []}
    assert len(result.problems) == 1
    assert result.problems[0].startswith(f"{path}:3: ") and why in result.problems[0]


def test_problems_are_logged_as_warnings(tmp_path, caplog):
    path = write(tmp_path, f"ImageId,EncodedPixels\n{ID_B},5 3\n{ID_B},5 3\n")
    read_rle_csv(path)
    assert any("duplicate row" in record.message for record in caplog.records)


def test_rejects_a_header_with_other_columns(tmp_path):
    path = write(tmp_path, "ImageId,Label\nx,1\n")
    with pytest.raises(ValueError, match="header"):
        read_rle_csv(path)


def test_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_rle_csv(tmp_path / "nope.csv")


def test_stage1_writer_reproduces_leading_spaces(tmp_path):
    path = tmp_path / "train-rle.csv"
    write_rle_csv(path, rows_from_annotations(EXPECTED), style="stage1")
    assert path.read_text().splitlines() == [
        "ImageId, EncodedPixels",
        f"{ID_A}, -1",
        f"{ID_B}, 175349 7 1013 12",
        f"{ID_B}, 5 3",
        f"{ID_C}, 1 2",
    ]


@pytest.mark.parametrize("style", ["stage1", "stage2"])
def test_written_csv_reads_back_identically(tmp_path, style):
    path = tmp_path / "out.csv"
    write_rle_csv(path, rows_from_annotations(EXPECTED), style=style)
    assert read_rle_csv(path).annotations == EXPECTED


def test_writer_rejects_unknown_style(tmp_path):
    with pytest.raises(ValueError, match="style"):
        write_rle_csv(tmp_path / "x.csv", [], style="stage3")


def test_failed_write_leaves_previous_file_intact(tmp_path):
    path = tmp_path / "out.csv"
    write_rle_csv(path, [(ID_A, "-1")])

    def rows():
        yield (ID_B, "5 3")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        write_rle_csv(path, rows())
    assert read_rle_csv(path).annotations == {ID_A: []}
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]  # no temporary file left behind


def test_written_files_get_ordinary_permissions(tmp_path):
    path = tmp_path / "out.csv"
    write_rle_csv(path, [(ID_A, "-1")])
    assert path.stat().st_mode & 0o644 == 0o644


def test_rle_numbers_out_of_range_are_reported_rows_naming_the_line(tmp_path):
    path = tmp_path / "train-rle.csv"
    path.write_text("ImageId,EncodedPixels\n1.2.3,9223372036854775807 1\n1.2.4," + str(10**30) + " 1\n1.2.5,-1\n")
    result = read_rle_csv(path)
    assert list(result.annotations) == ["1.2.5"]
    assert len(result.problems) == 2
    assert result.problems[0].startswith(f"{path}:2:") and "larger than any image" in result.problems[0]
    assert result.problems[1].startswith(f"{path}:3:")


def test_a_latin1_line_is_a_reported_row_and_the_others_are_read(tmp_path):
    path = tmp_path / "train-rle.csv"
    path.write_bytes(f"ImageId,EncodedPixels\n{ID_A},-1\nPatient Jos\xe9,5 3\n{ID_B},5 3\n".encode("latin-1"))
    result = read_rle_csv(path)
    assert result.annotations == {ID_A: [], ID_B: ["5 3"]}
    assert result.problems == [f"{path}:3: not UTF-8 text (byte 0xe9 at column 12); row skipped"]


def test_an_overlong_line_is_skipped_without_reading_it_whole(tmp_path):
    path = tmp_path / "train-rle.csv"
    path.write_text(f"ImageId,EncodedPixels\n{ID_A},{'1 1 ' * 1_300_000}\n{ID_B},5 3\n")  # a 5 MB line
    result = read_rle_csv(path)
    assert result.annotations == {ID_B: ["5 3"]}
    assert result.problems == [f"{path}:2: line longer than {2**20} bytes; row skipped"]


def test_an_unclosed_quote_is_named_and_swallows_no_other_row(tmp_path):
    path = write(tmp_path, f'ImageId,EncodedPixels\n{ID_A},"5 3\n{ID_B},-1\n"{ID_C}",5 3\n')
    result = read_rle_csv(path)
    assert result.annotations == {ID_B: [], ID_C: ["5 3"]}
    assert result.problems == [f"{path}:2: unclosed quote; row skipped"]


@pytest.mark.parametrize("content", ["", "ImageId,EncodedPixels\n", "ImageId,EncodedPixels\n\n\n", "ImageId,EncodedPixels\nx,5 x\n"])
def test_a_csv_without_a_usable_data_row_is_an_error_naming_the_file(tmp_path, content):
    path = write(tmp_path, content)
    with pytest.raises(ValueError, match=f"{path}: no usable data rows"):
        read_rle_csv(path)


def test_windows_line_endings_read_like_unix_ones(tmp_path):
    path = tmp_path / "train-rle.csv"
    path.write_bytes(f"ImageId, EncodedPixels\r\n{ID_A}, -1\r\n{ID_B}, 5 3\r\n".encode())
    assert read_rle_csv(path).annotations == {ID_A: [], ID_B: ["5 3"]}
