"""Reading DICOM radiographs: a MONAI reader that keeps the tags radiographs need and refuses what is not one.

Reading goes through MONAI's ``PydicomReader`` (never ITK, which turns a 2-D ``.dcm`` into a 3-D volume), so a
loaded image is the **transpose** of pydicom's ``pixel_array``: ``(cols, rows)``.
"""

from __future__ import annotations

import warnings

from monai.data import PydicomReader

__all__ = ["RADIOGRAPH_TAGS", "RadiographReader"]

#: Tags copied into a loaded image's metadata as plain values (collatable, readable by transforms).
RADIOGRAPH_TAGS = ("PhotometricInterpretation", "BitsStored", "SOPInstanceUID", "Rows", "Columns")


class RadiographReader(PydicomReader):
    """``PydicomReader`` for single-frame greyscale radiographs.

    Adds :data:`RADIOGRAPH_TAGS` to the metadata (so ``NormalizeRadiographd`` can invert MONOCHROME1 and knows
    the bit depth) and refuses what is not a greyscale single-frame image with an error naming the file.
    Use it as ``LoadImaged(keys="image", reader=RadiographReader())``; arguments are those of ``PydicomReader``.
    """

    def _get_array_data(self, img, filename):
        samples = int(getattr(img, "SamplesPerPixel", 1))
        if samples != 1:
            photometric = getattr(img, "PhotometricInterpretation", "?")
            raise ValueError(f"{filename}: {samples} samples per pixel ({photometric}); a greyscale radiograph is needed")
        frames = int(getattr(img, "NumberOfFrames", 1) or 1)
        if frames != 1:
            raise ValueError(f"{filename}: {frames} frames; a single-frame radiograph is needed")
        if "PixelData" not in img:
            raise ValueError(f"{filename}: no pixel data")
        try:
            return super()._get_array_data(img, filename)
        except Exception as error:  # pydicom raises many types for broken pixel data
            raise ValueError(f"{filename}: pixel data cannot be decoded: {error}") from error

    def get_data(self, img):
        # Radiographs carry no ImagePositionPatient / ImageOrientationPatient: an identity affine is right for
        # them, so PydicomReader's warning about it is noise on every file.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*ImageOrientationPatient.*", category=UserWarning)
            return super().get_data(img)

    def _get_meta_dict(self, img) -> dict:
        metadata = super()._get_meta_dict(img)
        for keyword in RADIOGRAPH_TAGS:
            value = getattr(img, keyword, None)
            if value is not None:
                metadata[keyword] = int(value) if isinstance(value, int) else str(value)
        return metadata
