"""Grad-CAM heatmaps (issue 16, item 1): where the hot region lies for a network with a known answer, the default
layer of every family, the gate's map, inference's --write_heatmaps and the single-DICOM command."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from scripts.inference.heatmaps import HeatmapMaker, blend, default_layer, main
from scripts.networks.definition import build_network
from scripts.utils.files import safe_name
from tests.conftest import REPO
from tests.helpers import BrightnessNet, asymmetric_case, write_test_dicom
from tests.test_inference import _run_inference, brightness_weights, mixed_folder  # noqa: F401  (fixtures)

FAMILIES = ["unet_resnet34", "unet_efficientnet", "unetplusplus", "attention_unet_resnet34", "double_unet"]


def _bright_patch():
    image = torch.full((1, 96, 72), 0.2)  # MONAI's (cols, rows) layout
    image[0, 20:44, 10:30] = 0.9
    return image


def test_the_hot_region_of_a_bright_is_positive_network_lies_on_the_bright_patch():
    image = _bright_patch()
    maker = HeatmapMaker(BrightnessNet())
    heat = maker(image)
    assert maker.layer == "conv" and heat.shape == (96, 72) and heat.dtype == np.float32
    patch = np.zeros((96, 72), bool)
    patch[20:44, 10:30] = True
    assert heat[patch].min() > 0.9 and heat[~patch].max() < 0.1


def test_occlusion_sensitivity_finds_the_bright_patch_too():
    heat = HeatmapMaker(BrightnessNet(), method="occlusion")(_bright_patch())
    assert heat.shape == (96, 72) and heat.max() == pytest.approx(1.0)
    near = np.zeros((96, 72), bool)
    near[20 - 12 : 44 + 12, 10 - 9 : 30 + 9] = True  # the patch (rows 20:44, columns 10:30) and a window around it
    # hiding part of the patch lowers the score; hiding the dark background does not
    assert heat[26:38, 15:25].min() > 0.5 and heat[~near].max() == 0.0
    with pytest.raises(ValueError, match="heatmap_method 'shap'"):
        HeatmapMaker(BrightnessNet(), method="shap")


def test_a_whole_image_model_is_explained_at_its_size_and_the_map_comes_back_at_the_images():
    heat = HeatmapMaker(BrightnessNet(), image_size=[48, 48])(_bright_patch())
    assert heat.shape == (96, 72) and heat[30, 20] > 0.9 and heat[80, 60] < 0.1


@pytest.mark.parametrize("family", [*FAMILIES, "default"])
def test_every_family_has_a_default_layer_whose_map_has_the_images_size(family):
    definition = (json.loads((REPO / "configs" / "common.json").read_text())["network_config"] if family == "default"
                  else json.loads((REPO / "configs" / "networks" / f"{family}.json").read_text())["network_config"])  # fmt: skip
    if family == "default":
        definition["channels"] = [8, 16, 32, 64, 128]
    torch.manual_seed(0)
    network = build_network(definition)
    maker = HeatmapMaker(network)
    assert maker.layer == default_layer(network) and not maker.layer.endswith(("head", "head.conv", "final_conv_0_4"))
    heat = maker(torch.rand(1, 64, 96))
    assert heat.shape == (64, 96) and 0.0 <= heat.min() and heat.max() <= 1.0


@pytest.mark.parametrize("definition", [
    {"target": "AttentionUnet", "spatial_dims": 2, "in_channels": 1, "out_channels": 1, "channels": [4, 8, 16], "strides": [2, 2]},
    {"target": "FlexibleUNet", "spatial_dims": 2, "in_channels": 1, "out_channels": 1, "backbone": "resnet34-imagenet"},
])  # fmt: skip
def test_the_gates_map_comes_from_the_deepest_encoder_features_and_needs_a_head(definition):
    headed = build_network({**definition, "image_head": True})
    maker = HeatmapMaker(headed, target="gate")
    assert maker.layer in ("model.1.submodule.1.submodule", "encoder.layer4")
    assert maker(torch.rand(1, 64, 64)).shape == (64, 64)
    with pytest.raises(ValueError, match="needs a network with an image head"):
        HeatmapMaker(build_network(definition), target="gate")
    with pytest.raises(ValueError, match="heatmap_layer 'nowhere'"):
        HeatmapMaker(headed, layer="nowhere")


def test_inference_runs_on_a_copy_so_its_network_keeps_no_hooks():
    network = BrightnessNet()
    HeatmapMaker(network)(_bright_patch())
    assert not network.conv._forward_hooks and not network.conv._backward_hooks


def test_blend_keeps_the_radiograph_where_the_map_is_cold_and_colours_it_where_hot():
    image, heat = np.full((4, 6), 0.5), np.zeros((4, 6))
    heat[1, 2] = 1.0
    picture = blend(image, heat)
    assert picture.shape == (4, 6, 3) and picture.dtype == np.uint8
    assert (picture[0, 0] == 128).all() and picture[1, 2, 0] > picture[1, 2, 2] + 80  # red over grey


def test_the_command_writes_one_dicoms_heatmap_at_its_size_in_image_orientation(tmp_path):
    pixels, mask = asymmetric_case(120, 90)
    dicom = write_test_dicom(tmp_path / "x.dcm", pixels, sop_instance_uid="1.2.3.4", jpeg_quality=None)
    (tmp_path / "models").mkdir()
    torch.save(BrightnessNet().state_dict(), tmp_path / "models" / "model.pt")
    (tmp_path / "models" / "model.json").write_text(json.dumps({"network": {"target": "tests.helpers.BrightnessNet"}}))
    assert main(["--dicom", str(dicom), "--ckpt_dir", str(tmp_path / "models"), "--out", str(tmp_path / "h.png")]) == 0
    picture = np.asarray(Image.open(tmp_path / "h.png"))
    assert picture.shape == (120, 90, 3)
    redness = picture[..., 0].astype(int) - picture[..., 2]
    assert redness[mask].mean() > 60 and np.abs(redness[~mask]).max() < 10  # hot on the bright (positive) block
    models = str(tmp_path / "models")
    assert main(["--dicom", str(dicom), "--ckpt_dir", models, "--out", str(tmp_path / "o.png"), "--method", "occlusion"]) == 0
    picture = np.asarray(Image.open(tmp_path / "o.png")).astype(int)
    redness = picture[..., 0] - picture[..., 2]
    rows, cols = np.nonzero(mask)
    assert picture.shape == (120, 90, 3) and redness[rows.mean().astype(int), cols.mean().astype(int)] > 60


def test_inference_writes_one_heatmap_per_image_at_its_size(mixed_folder, brightness_weights, tmp_path):  # noqa: F811
    _run_inference(mixed_folder["root"], tmp_path, brightness_weights, "--write_heatmaps", "true")
    heatmaps = tmp_path / "heatmaps"
    assert sorted(p.stem for p in heatmaps.iterdir()) == sorted(safe_name(i) for i in mixed_folder["truth"])
    for image_id, truth in mixed_folder["truth"].items():
        picture = np.asarray(Image.open(heatmaps / f"{safe_name(image_id)}.png"))
        assert picture.shape == (*truth.shape, 3)
        if truth.any():
            redness = picture[..., 0].astype(int) - picture[..., 2]
            assert redness[truth].mean() > redness[~truth].mean() + 40
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["outputs"]["heatmaps"] == "heatmaps/ (Grad-CAM at conv)"
