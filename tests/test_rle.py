"""Specification of the SIIM-ACR run-length encoding (scripts/siim/rle.py)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from scripts.siim.rle import decode, encode, parse_runs
from tests.official_rle import official_decode, official_encode


def hand_checked_mask() -> np.ndarray:
    """SIIM_FORMAT.md's example: 4 rows x 5 cols, foreground at (r0,c1), (r1,c2), (r2,c2), (r1,c3)."""
    mask = np.zeros((4, 5), dtype=bool)
    mask[0, 1] = mask[1, 2] = mask[2, 2] = mask[1, 3] = True
    return mask


def test_encode_matches_hand_checked_example():
    assert encode(hand_checked_mask()) == "4 1 4 2 2 1"


def test_decode_matches_hand_checked_example():
    np.testing.assert_array_equal(decode("4 1 4 2 2 1", (4, 5)), hand_checked_mask())


def test_first_start_is_absolute_and_later_starts_are_gaps():
    starts, lengths = parse_runs("4 1 4 2 2 1")
    assert starts.tolist() == [4, 9, 13]
    assert lengths.tolist() == [1, 2, 1]


@pytest.mark.parametrize("dtype,value", [(bool, True), (np.uint8, 1), (np.uint8, 255), (np.int64, 255)])
def test_encode_accepts_bool_01_and_0255_masks(dtype, value):
    mask = np.zeros((4, 5), dtype=dtype)
    mask[hand_checked_mask()] = value
    assert encode(mask) == "4 1 4 2 2 1"


def test_encode_rejects_other_values():
    mask = np.zeros((4, 5), dtype=np.uint8)
    mask[0, 0], mask[1, 1] = 1, 255
    with pytest.raises(ValueError, match="0/255"):
        encode(mask)


def test_encode_rejects_non_2d():
    with pytest.raises(ValueError, match="2-D"):
        encode(np.zeros((1, 4, 5), dtype=bool))


def test_empty_mask_encodes_to_minus_one():
    assert encode(np.zeros((7, 3), dtype=np.uint8)) == "-1"


@pytest.mark.parametrize("text", ["-1", " -1", "", "   ", "-1 "])
def test_empty_strings_decode_to_empty_mask(text):
    out = decode(text, (6, 4))
    assert out.shape == (6, 4) and out.dtype == bool and not out.any()


def test_run_ending_on_last_pixel_is_encoded():
    mask = np.zeros((3, 4), dtype=bool)
    mask[1:, 3] = True  # the last two pixels in column-major order
    assert encode(mask) == "10 2"
    np.testing.assert_array_equal(decode("10 2", (3, 4)), mask)


def test_full_mask_round_trips():
    mask = np.ones((5, 3), dtype=bool)
    assert encode(mask) == "0 15"
    assert decode("0 15", (5, 3)).all()


def test_order_is_column_major_not_row_major():
    mask = np.zeros((3, 4), dtype=bool)
    mask[0, :2] = True  # two pixels side by side in one row: two runs column-major, one run row-major
    assert encode(mask) == "0 1 2 1"


def test_non_square_decode_places_pixels_in_image_orientation():
    # 2 rows x 3 cols; offset 3 in column-major order is row 1 of column 1.
    out = decode("3 1", (2, 3))
    assert out.shape == (2, 3)
    assert np.argwhere(out).tolist() == [[1, 1]]


def test_decode_agrees_with_official_decoder_and_its_transpose():
    rle = "4 1 4 2 2 1"
    np.testing.assert_array_equal(decode(rle, (4, 5)), official_decode(rle, 5, 4).T == 255)


def test_forgetting_the_transpose_gives_a_different_mask():
    rle = "4 1 4 2 2 1"
    wrong = official_decode(rle, 4, 5) == 255  # (rows, cols) reshape without the transpose
    assert not np.array_equal(decode(rle, (4, 5)).ravel(), wrong.ravel())


def test_adjacent_runs_given_with_zero_gap_decode_as_one_region():
    np.testing.assert_array_equal(decode("0 2 0 3", (5, 1)).ravel(), [True] * 5)


@pytest.mark.parametrize(
    "text,message",
    [
        ("4 1 4", "odd count"),
        ("4 1.5", "non-integer"),
        ("4 a", "non-integer"),
        ("+4 1", "non-integer"),  # Python's int() takes these three; no SIIM tool writes them
        ("4 1_0", "non-integer"),
        ("\u0664 1", "non-integer"),  # an Arabic-Indic digit four
        ("4 0", "non-positive length"),
        ("4 -2", "non-positive length"),
        ("-3 2", "negative start"),
        ("4 1 -1 2", "negative gap"),
        ("18 3", "past the end"),
        ("4 1 10 6", "past the end"),
    ],
)
def test_malformed_input_raises_value_error_saying_what_is_wrong(text, message):
    with pytest.raises(ValueError, match=message):
        decode(text, (4, 5))


def test_non_string_input_raises():
    with pytest.raises(ValueError, match="string"):
        decode(None, (4, 5))


def masks(max_side: int = 24):
    shapes = st.tuples(st.integers(1, max_side), st.integers(1, max_side))
    return shapes.flatmap(lambda shape: arrays(bool, shape))


@settings(max_examples=300, deadline=None)
@given(masks())
def test_random_masks_round_trip(mask):
    np.testing.assert_array_equal(decode(encode(mask), mask.shape), mask)


@settings(max_examples=200, deadline=None)
@given(masks())
def test_encode_agrees_with_reference_encoder(mask):
    reference = official_encode(mask.astype(np.uint8) * 255)
    assert encode(mask) == (reference or "-1")


@settings(max_examples=200, deadline=None)
@given(masks())
def test_decode_agrees_with_official_decoder(mask):
    rows, cols = mask.shape
    text = encode(mask)
    np.testing.assert_array_equal(decode(text, (rows, cols)), official_decode(text, cols, rows).T == 255)


@settings(max_examples=100, deadline=None)
@given(masks())
def test_encoded_runs_never_touch(mask):
    starts, lengths = parse_runs(encode(mask))
    assert (starts[1:] > starts[:-1] + lengths[:-1]).all()


def test_masks_with_many_runs_decode_like_few_runs():
    """Both decoding strategies (slice fill, running sum above 4096 runs) give the same masks."""
    rng = np.random.default_rng(0)
    speckle = rng.random((300, 257)) < 0.3  # ~20,000 runs
    blob = np.zeros((300, 257), bool)
    blob[40:90, 10:200] = True  # 190 runs
    for mask in (speckle, blob):
        encoded = encode(mask)
        assert (len(encoded.split()) // 2 > 4096) == (mask is speckle)
        decoded = decode(encoded, mask.shape)
        assert decoded.shape == mask.shape and decoded.dtype == bool
        np.testing.assert_array_equal(decoded, mask)
        np.testing.assert_array_equal(decode(" " + encoded + " ", mask.shape), mask)


@pytest.mark.parametrize(
    "text",
    [
        "9223372036854775807 1",  # int64's largest: used to decode to an empty mask
        "9223372036854775807 9223372036854775807 0 1",  # used to wrap around to one stray pixel
        str(10**30) + " 1",  # used to raise OverflowError
        "1 " + "9" * 5000,  # beyond Python's int-from-string digit limit
        "-9223372036854775808 1",
        "1099511627776 1 1099511627776 1",  # each number allowed, their sum past any image
    ],
)
def test_numbers_beyond_any_image_are_a_value_error_not_a_wrong_mask(text):
    with pytest.raises(ValueError, match="larger than any image|negative start"):
        decode(text, (1024, 1024))
    with pytest.raises(ValueError):
        parse_runs(text)


@pytest.mark.parametrize("shape", [(4,), (4, 5, 1), (0, 5), (4, -1), (4.0, 5), (True, 5), ("4", "5"), None, 7])
def test_decode_refuses_a_shape_that_is_not_two_positive_integers(shape):
    with pytest.raises(ValueError, match="two positive integers"):
        decode("1 1", shape)


def test_numpy_integer_shapes_are_accepted():
    assert decode("1 1", (np.int64(2), np.int32(2))).sum() == 1
