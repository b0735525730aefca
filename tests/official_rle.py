"""The competition's reference RLE semantics, written out loop by loop as the official helper behaves.

The official ``rle2mask(rle, width, height)`` fills a flat array, reshapes it to ``(width, height)`` and every
kernel transposes the result; ``mask2rle`` walks pixels column by column and only counts pixels equal to 255.
Kept deliberately naive (per-pixel loops) so it is obviously the definition, not our implementation.
"""

import numpy as np


def official_decode(rle: str, width: int, height: int) -> np.ndarray:
    """Returns the official (width, height) array of 0/255; callers transpose it to (rows, cols)."""
    mask = np.zeros(width * height, dtype=np.uint8)
    if rle.strip() == "-1":
        return mask.reshape(width, height)
    array = [int(x) for x in rle.split()]
    starts, lengths = array[0::2], array[1::2]
    position = 0
    for start, length in zip(starts, lengths):
        position += start
        mask[position : position + length] = 255
        position += length
    return mask.reshape(width, height)


def official_encode(image_rows_cols: np.ndarray) -> str:
    """Column-major walk over a (rows, cols) 0/255 image, relative starts; '' for an empty mask.

    Unlike the official code, a run ending on the last pixel is closed (the official bug drops it).
    """
    rows, cols = image_rows_cols.shape
    pairs, run_start, run_length, last_end, current = [], -1, 0, 0, 0
    for x in range(cols):
        for y in range(rows):
            if image_rows_cols[y, x] == 255:
                if run_start == -1:
                    run_start, run_length = current, 1
                else:
                    run_length += 1
            elif run_start != -1:
                pairs += [run_start - last_end, run_length]
                last_end, run_start = run_start + run_length, -1
            current += 1
    if run_start != -1:
        pairs += [run_start - last_end, run_length]
    return " ".join(map(str, pairs))
