"""The image-level gate (issue 15): the encoder heads, their loss, the gating post-processing, the joint search of
the gate threshold with the triplet, and ensembles of members with and without a head."""

import json

import pytest
import torch

from scripts.evaluation.threshold_search import TripletSearchHandler, TripletSearchMetric
from scripts.inference.ensemble import AveragedProbabilities
from scripts.inference.gating import GATED_KEY, IMAGE_PROB_KEY, ImageGated
from scripts.networks.definition import build_network
from scripts.training.image_loss import MaskAndImageLoss, image_targets
from tests.conftest import REPO

SMALL_ATTENTION = {"target": "AttentionUnet", "spatial_dims": 2, "in_channels": 1, "out_channels": 1,
                   "channels": [4, 8, 16], "strides": [2, 2]}  # fmt: skip
GATED_FAMILIES = ["unet_resnet34", "unet_efficientnet", "attention_unet_resnet34", "double_unet"]


def _family(name: str) -> dict:
    return json.loads((REPO / "configs" / "networks" / f"{name}.json").read_text())["network_config"]


@pytest.mark.parametrize("family", [*GATED_FAMILIES, "default"])
def test_a_head_adds_the_image_logit_as_channel_1_and_leaves_the_mask_as_the_plain_network_computes_it(family):
    definition = dict(SMALL_ATTENTION) if family == "default" else _family(family)
    torch.manual_seed(0)
    gated = build_network({**definition, "image_head": True}).eval()
    plain = build_network(definition).eval()
    extra = set(gated.state_dict()) - set(plain.state_dict())
    assert extra == {"image_head.linear.weight", "image_head.linear.bias"} and set(plain.state_dict()) <= set(gated.state_dict())
    plain.load_state_dict({key: value for key, value in gated.state_dict().items() if key not in extra})
    x = torch.rand(2, 1, 64, 96)
    with torch.no_grad():
        y = gated(x)
        assert y.shape == (2, 2, 64, 96)
        torch.testing.assert_close(y[:, :1], plain(x))
        assert torch.all(y[:, 1] == y[:, 1, :1, :1])  # one logit per image, broadcast
        torch.testing.assert_close(torch.jit.script(gated)(x), y, atol=1e-5, rtol=1e-5)  # exports as it is


def test_a_plain_checkpoint_starts_a_network_with_a_head_and_a_network_without_a_head_is_unchanged():
    plain = build_network(SMALL_ATTENTION)
    gated = build_network({**SMALL_ATTENTION, "image_head": True})
    missing, unexpected = gated.load_state_dict(plain.state_dict(), strict=False)
    assert sorted(missing) == ["image_head.linear.bias", "image_head.linear.weight"] and not unexpected
    assert type(build_network({**SMALL_ATTENTION, "image_head": False})).__name__ == "AttentionUnet"


def test_a_network_without_a_head_or_a_head_with_several_mask_channels_is_refused_by_name():
    unetplusplus = _family("unetplusplus")
    with pytest.raises(ValueError, match="UNetPlusPlus: has no image head"):
        build_network({**unetplusplus, "image_head": True})
    with pytest.raises(ValueError, match="out_channels 2; the bundle's networks give one pneumothorax logit"):
        build_network({**SMALL_ATTENTION, "out_channels": 2, "image_head": True})
    with pytest.raises(ValueError, match="out_channels 2; the bundle's networks give one pneumothorax logit"):
        build_network({**SMALL_ATTENTION, "out_channels": 2})  # two channels would be read as mask and gate
    with pytest.raises(ValueError, match="image_head must be true or false, got 'maybe'"):
        build_network({**SMALL_ATTENTION, "image_head": "maybe"})
    assert type(build_network({**SMALL_ATTENTION, "image_head": "true"})).__name__ == "GatedAttentionUnet"  # as typed


class _NoMaskLoss(torch.nn.Module):
    def forward(self, pred, label):
        return pred.sum() * 0


def test_the_heads_logit_trains_to_tell_images_with_a_bright_patch_from_those_without():
    torch.manual_seed(0)
    images = torch.rand(8, 1, 32, 32) * 0.2
    labels = torch.zeros(8, 1, 32, 32)
    images[:4, :, 8:20, 10:22] += 0.7  # the first four show the "lesion"
    labels[:4, :, 8:20, 10:22] = 1
    network = build_network({**SMALL_ATTENTION, "image_head": True})
    loss_fn = MaskAndImageLoss(_NoMaskLoss(), image_weight=1.0)  # the image term alone: its fall is the head's
    optimizer = torch.optim.Adam(network.parameters(), lr=0.01)
    losses = []
    for _ in range(40):
        optimizer.zero_grad()
        loss = loss_fn(network(images), labels)
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    assert losses[-1] < 0.25 * losses[0]
    with torch.no_grad():
        probability = torch.sigmoid(network.eval()(images)[:, 1, 0, 0])
    assert probability[:4].min() > probability[4:].max()
    assert image_targets(labels).tolist() == [1.0] * 4 + [0.0] * 4


def test_the_loss_of_a_one_channel_network_is_the_mask_loss_and_the_image_term_is_weighted():
    from monai.losses import DiceFocalLoss

    mask_loss = DiceFocalLoss(sigmoid=True, batch=True)
    pred, label = torch.randn(2, 1, 8, 8), (torch.rand(2, 1, 8, 8) > 0.7).float()
    assert MaskAndImageLoss(mask_loss, 3.0)(pred, label) == mask_loss(pred, label)
    image = torch.tensor([2.0, -1.0])[:, None, None, None].expand(2, 1, 8, 8)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(torch.tensor([2.0, -1.0]), image_targets(label))
    two = torch.cat([pred, image], dim=1)
    torch.testing.assert_close(MaskAndImageLoss(mask_loss, 3.0)(two, label), mask_loss(pred, label) + 3.0 * bce)
    with pytest.raises(ValueError, match="image_loss_weight must be a number >= 0"):
        MaskAndImageLoss(mask_loss, -1)


def _gated(mask_prob: float, gate_prob: float) -> torch.Tensor:
    prob = torch.zeros(2, 16, 16)
    prob[0, 4:10, 4:10] = mask_prob
    prob[1] = gate_prob
    return prob


def test_the_gate_empties_the_mask_below_its_threshold_and_keeps_it_above():
    gate = ImageGated("pred", threshold=0.5)
    below = gate({"pred": _gated(0.9, 0.3)})
    assert below["pred"].shape == (1, 16, 16) and not below["pred"].any()
    assert below[IMAGE_PROB_KEY] == pytest.approx(0.3) and below[GATED_KEY]
    above = gate({"pred": _gated(0.9, 0.7)})
    torch.testing.assert_close(above["pred"], _gated(0.9, 0.7)[:1])
    assert above[IMAGE_PROB_KEY] == pytest.approx(0.7)
    assert ImageGated("pred", threshold=0.0)({"pred": _gated(0.9, 0.01)})["pred"].any()  # 0: no gate


def test_without_a_gate_nothing_is_emptied_and_the_probability_is_the_largest_pixels():
    out = ImageGated("pred", threshold=0.99)({"pred": _gated(0.8, 0.0)[:1]})
    torch.testing.assert_close(out["pred"], _gated(0.8, 0.0)[:1])
    assert out[IMAGE_PROB_KEY] == pytest.approx(0.8) and not out[GATED_KEY]
    with pytest.raises(ValueError, match="gate_threshold must lie in"):
        ImageGated("pred", threshold=1.5)


def _search_case():
    """Four images: two positives whose masks are exact and whose gate says 0.8 and 0.9; two negatives with a large,
    confident false blob, which no triple removes, and a gate of 0.2 and 0.35."""
    probs, labels = [], []
    for positive, gate in ((True, 0.8), (True, 0.9), (False, 0.2), (False, 0.35)):
        prob = torch.zeros(2, 64, 64)
        prob[0, 10:40, 10:40] = 0.95
        prob[1] = gate
        label = torch.zeros(1, 64, 64)
        if positive:
            label[0, 10:40, 10:40] = 1
        probs.append(prob)
        labels.append(label)
    return torch.stack(probs), torch.stack(labels)


def test_the_joint_search_finds_the_gate_threshold_that_separates_the_images_and_scores_without_it_too(tmp_path):
    probs, labels = _search_case()
    search = TripletSearchMetric(tops=(0.5, 0.9), min_areas=(0, 100), bottoms=(0.5,), gates=(0.1, 0.3, 0.5, 0.85))
    search(y_pred=probs, y=labels)
    best = search.best()
    assert best.score == pytest.approx(1.0) and best.gate == 0.5  # 0.3 lets the 0.35 negative through; 0.85 drops a positive
    assert search.best(gate=False).score == pytest.approx(0.5)  # both negatives keep their blob
    assert {row.gate for row in search.table()} == {0.0, 0.1, 0.3, 0.5, 0.85}
    handler = TripletSearchHandler(tmp_path / "thresholds.json", tops=(0.9,), min_areas=(0,), bottoms=(0.5,), gates=(0.5,))
    handler.update((probs, labels))
    assert handler.compute() == pytest.approx(1.0)
    saved = json.loads((tmp_path / "thresholds.json").read_text())
    assert saved["gate"] == 0.5 and saved["competition_dice_without_gate"] == pytest.approx(0.5)
    from scripts.evaluation.triplet import load_gate

    assert load_gate(tmp_path / "thresholds.json", default=0.1) == 0.5
    assert load_gate(tmp_path / "none.json", default=0.1) == 0.1


class _Fixed(torch.nn.Module):
    """A member with a known output: mask probability ``mask`` and, if given, gate probability ``gate``."""

    def __init__(self, mask: float, gate: float | None = None) -> None:
        super().__init__()
        self.mask, self.gate = mask, gate
        self.anchor = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x):
        channels = [torch.full_like(x, self.mask)] + ([torch.full_like(x, self.gate)] if self.gate is not None else [])
        return torch.logit(torch.cat(channels, dim=1)) + self.anchor


def test_an_ensemble_averages_the_mask_over_all_members_and_the_gate_over_those_with_a_head(tmp_path):
    members = [_Fixed(0.2, 0.9), _Fixed(0.6), _Fixed(0.4, 0.5)]
    paths = []
    for index, member in enumerate(members):
        paths.append(tmp_path / f"m{index}.pt")
        torch.save(member.state_dict(), paths[-1])
    ensemble = AveragedProbabilities(members[0], paths, network_config=None)
    for position, member in enumerate(members):
        ensemble.networks[position] = member
    out = torch.sigmoid(ensemble(torch.zeros(1, 1, 4, 4)))
    assert out.shape == (1, 2, 4, 4)
    torch.testing.assert_close(out[:, 0], torch.full((1, 4, 4), 0.4))
    torch.testing.assert_close(out[:, 1], torch.full((1, 4, 4), 0.7))


@pytest.mark.slow
def test_a_headed_segmenter_trains_evaluates_with_the_gate_searched_and_infers_with_it(tiny_siim, tmp_path):
    from tests.conftest import COMMON, TINY, config_files, run_bundle

    common = ["--meta_file", "configs/metadata.json", "--dataset_dir", str(tiny_siim), "--ckpt_dir", str(tmp_path / "models")]
    run_bundle(["run", "--config_file", config_files(COMMON, "configs/train.json", TINY), *common,
                "--output_dir", str(tmp_path / "train"), "--network_config#image_head", "true", "--max_epochs", "1"])  # fmt: skip
    assert json.loads((tmp_path / "models" / "model.json").read_text())["network"]["image_head"] is True
    run_bundle(["run", "--config_file", config_files(COMMON, "configs/train.json", "configs/evaluate.json", TINY), *common,
                "--output_dir", str(tmp_path / "eval")])  # fmt: skip
    thresholds = json.loads((tmp_path / "models" / "thresholds.json").read_text())
    assert 0.0 <= thresholds["gate"] <= 1.0 and thresholds["competition_dice"] >= thresholds["competition_dice_without_gate"]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert "val_tuned_competition_dice_without_gate" in metrics["metrics"] and metrics["tuned_gate"] == thresholds["gate"]
    out = tmp_path / "out"
    run_bundle(["run", "--config_file", config_files(COMMON, "configs/inference.json"), "--meta_file", "configs/metadata.json",
                "--dataset_dir", str(tiny_siim / "dicom-images-test"), "--output_dir", str(out),
                "--ckpt_dir", str(tmp_path / "models"), "--roi_size", "[64,64]"])  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    assert summary["probability"] == "the image gate's" and summary["gate_threshold"] == thresholds["gate"]
    rows = (out / "predictions.csv").read_text().splitlines()[1:]
    assert len(rows) == summary["processed"] and all(0.0 <= float(row.split(",")[1]) <= 1.0 for row in rows)
