"""Small builders shared by tests."""

from pathlib import Path

import numpy as np
import torch

from scripts.synthetic.dicom_writer import write_radiograph

REPO = Path(__file__).resolve().parents[1]


def asymmetric_case(rows: int = 300, cols: int = 220) -> tuple[np.ndarray, np.ndarray]:
    """A non-square image and its mask, both in image orientation, with no symmetry a transpose or flip keeps.

    Foreground: a tall block near the top-left and a wide bar near the bottom-right.
    """
    mask = np.zeros((rows, cols), dtype=bool)
    mask[10:90, 5:30] = True
    mask[rows - 40 : rows - 30, cols // 2 : cols - 3] = True
    pixels = np.full((rows, cols), 30, dtype=np.uint8)
    pixels[mask] = 220
    return pixels, mask


def write_test_dicom(path: Path, pixels: np.ndarray, **kwargs) -> Path:
    uid = kwargs.pop("sop_instance_uid", "1.2.826.0.1.3680043.8.498.1")
    return write_radiograph(
        path,
        pixels,
        sop_instance_uid=uid,
        study_instance_uid=uid + ".1",
        series_instance_uid=uid + ".2",
        **kwargs,
    )


class BrightnessNet(torch.nn.Module):
    """A stand-in segmentation network with a known answer: logits ``gain * (x - 0.5)``, i.e. bright = positive.

    It takes (and ignores) AttentionUnet's arguments, so a test config can swap it in for ``network_def`` and check
    the whole inference pipeline (loading, orientation, sliding window, thresholds, writers) against a known mask.
    """

    def __init__(self, gain: float = 40.0, **_: object) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, kernel_size=1)  # a layer, for Grad-CAM to explain
        with torch.no_grad():
            self.conv.weight.fill_(float(gain))
            self.conv.bias.fill_(-float(gain) / 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def image_loading(compact: bool = True) -> list:
    """The bundle's image preprocessing as ``configs/common.json`` lists it (``image_loading``); without its last step,
    the uint8 cache form, when ``compact`` is false."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(REPO / "configs" / "common.json"))
    steps = parser.get_parsed_content("image_loading")
    if type(steps[-1]).__name__ != "ImageToUint8d":
        raise AssertionError(f"configs/common.json: image_loading should end with ImageToUint8d, not {steps[-1]}")
    return steps if compact else steps[:-1]


class KeepsArguments(torch.nn.Module):
    """A network that keeps the arguments it was built with (``self.arguments``), to see what a definition passes."""

    def __init__(self, **arguments: object) -> None:
        super().__init__()
        self.arguments = arguments
        self.scale = torch.nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x
