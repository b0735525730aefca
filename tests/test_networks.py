"""Networks defined as data: built from a definition, recorded beside the weights, and mixed in one ensemble."""

import json

import pytest
import torch

from scripts.inference.ensemble import AveragedProbabilities
from scripts.networks.definition import build_network, definition_of, network_for, saved_network_config
from scripts.training.checkpoints import load_weights
from tests.conftest import REPO

REPO_CONFIGS = REPO / "configs"

TINY_ATTENTION = {"target": "AttentionUnet", "spatial_dims": 2, "in_channels": 1, "out_channels": 1,
                  "channels": [4, 8, 16], "strides": [2, 2]}  # fmt: skip
TINY_UNET = {"target": "BasicUNet", "spatial_dims": 2, "in_channels": 1, "out_channels": 1,
             "features": [4, 4, 8, 8, 16, 4]}  # fmt: skip


def _checkpoint(folder, name, config, seed):
    """A trained-looking checkpoint: the weights of ``config``'s network and the record naming it."""
    torch.manual_seed(seed)
    network = build_network(config)
    torch.save(network.state_dict(), folder / f"{name}.pt")
    (folder / f"{name}.json").write_text(json.dumps({"metric": "val_competition_dice", "score": 0.5, "epoch": 1,
                                                     "network": config}))
    return folder / f"{name}.pt", network.eval()


def test_a_definition_builds_its_network_and_a_bad_one_says_what_is_wrong():
    assert isinstance(build_network(TINY_ATTENTION), torch.nn.Module)
    with pytest.raises(ValueError, match="an object with a 'target' name"):
        build_network({"spatial_dims": 2})
    with pytest.raises(ValueError, match="network NoSuchNet cannot be built from its definition"):
        build_network({"target": "NoSuchNet"})
    with pytest.raises(ValueError, match="network AttentionUnet cannot be built"):
        build_network({**TINY_ATTENTION, "no_such_argument": 1})


def test_a_checkpoint_gets_the_network_its_record_names_and_an_unrecorded_one_the_default(tmp_path):
    path, _ = _checkpoint(tmp_path, "unet", TINY_UNET, seed=0)
    assert saved_network_config(path) == TINY_UNET
    assert type(network_for(path, TINY_ATTENTION)).__name__ == "BasicUNet"
    torch.save({}, tmp_path / "old.pt")
    (tmp_path / "old.json").write_text(json.dumps({"metric": "val_competition_dice", "score": 0.5, "epoch": 1}))
    assert type(network_for(tmp_path / "old.pt", TINY_ATTENTION)).__name__ == "AttentionUnet"
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"broken.json: the record of broken.pt is not readable JSON"):
        saved_network_config(tmp_path / "broken.pt")


def test_weights_that_do_not_fit_their_record_name_both_files_and_the_first_mismatched_key(tmp_path):
    path, _ = _checkpoint(tmp_path, "model", TINY_ATTENTION, seed=0)
    torch.save(build_network(TINY_UNET).state_dict(), path)  # weights of another network under the same record
    with pytest.raises(ValueError) as raised:
        load_weights(network_for(path, TINY_ATTENTION), path)
    message = str(raised.value)
    assert message.startswith(f"{path}: weights of another network than the one {tmp_path / 'model.json'} defines")
    assert "first mismatched key: " in message


def test_a_mixed_ensemble_averages_the_probabilities_of_its_different_networks(tmp_path):
    members = [_checkpoint(tmp_path, "attention", TINY_ATTENTION, seed=1), _checkpoint(tmp_path, "unet", TINY_UNET, 2)]
    ensemble = AveragedProbabilities(build_network(TINY_ATTENTION), [path for path, _ in members])
    assert [type(network).__name__ for network in ensemble.networks] == ["AttentionUnet", "BasicUNet"]
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        expected = sum(torch.sigmoid(network(x)) for _, network in members) / len(members)
        torch.testing.assert_close(torch.sigmoid(ensemble(x)), expected, atol=1e-5, rtol=1e-5)
    weighted = AveragedProbabilities(build_network(TINY_ATTENTION), [path for path, _ in members], weights=[3, 1])
    with torch.no_grad():
        expected = 0.75 * torch.sigmoid(members[0][1](x)) + 0.25 * torch.sigmoid(members[1][1](x))
        torch.testing.assert_close(torch.sigmoid(weighted(x)), expected, atol=1e-5, rtol=1e-5)
    for bad in ([1.0], [1.0, -1.0], [0, 0], [1.0, float("nan")]):
        with pytest.raises(ValueError, match="one weight per checkpoint"):
            AveragedProbabilities(build_network(TINY_ATTENTION), [path for path, _ in members], weights=bad)


def test_a_definition_is_passed_as_plain_data_and_must_be_json():
    """Strings reach the network as written (no ``$`` evaluation, no ``#`` or ``@`` parsing), ``_desc_`` is not an
    argument, and a definition that could not be recorded in ``model.json`` is refused when it is built."""
    definition = {"target": "tests.helpers.KeepsArguments", "_desc_": "a note", "name": "$1 + 1", "path": "a#b@c"}
    network = build_network(definition)
    assert network.arguments == {"name": "$1 + 1", "path": "a#b@c"}
    assert definition_of(network) == definition and definition_of(torch.nn.Conv2d(1, 1, 1)) is None
    with pytest.raises(ValueError, match="network tests.helpers.KeepsArguments: its definition is not plain JSON"):
        build_network({**definition, "weights": torch.ones(1)})
    with pytest.raises(ValueError, match="not plain JSON"):
        build_network({**definition, "gain": float("nan")})


def test_a_later_checkpoint_without_a_record_gets_network_config_not_the_first_checkpoints_network(tmp_path):
    first, _ = _checkpoint(tmp_path, "unet", TINY_UNET, seed=0)
    torch.manual_seed(1)
    torch.save(build_network(TINY_ATTENTION).state_dict(), tmp_path / "old.pt")  # no record beside it
    first_network = network_for(first, TINY_ATTENTION)
    ensemble = AveragedProbabilities(first_network, [first, tmp_path / "old.pt"], network_config=TINY_ATTENTION)
    assert [type(network).__name__ for network in ensemble.networks] == ["BasicUNet", "AttentionUnet"]
    assert ensemble.networks[0] is first_network  # built once, for the first checkpoint
    with pytest.raises(ValueError, match=r"old.pt: weights of another network than network_config"):
        AveragedProbabilities(first_network, [first, tmp_path / "old.pt"], network_config=TINY_UNET)


def test_training_refuses_a_network_not_built_from_network_config():
    from scripts.training.checkpoints import BestModelSaver

    with pytest.raises(ValueError, match=r"network_def: a Conv2d not built from network_config, so .*model.json"):
        BestModelSaver(torch.nn.Conv2d(1, 1, 1), "models/model.pt", record_network=True)
    saver = BestModelSaver(build_network(TINY_UNET), "models/model.pt", record_network=True)
    assert saver.network_config == TINY_UNET


def test_network_def_overrides_of_before_0_4_fail_with_what_to_write_instead(tiny_siim, tmp_path):
    """``--network_def#channels`` (the arguments moved to network_config) and a ``network_def`` component of its own
    (its checkpoint could not say which network it is): both stop before training, saying what to do."""
    from tests.conftest import COMMON, TINY, config_files, run_bundle

    common = ["run", "--meta_file", "configs/metadata.json", "--dataset_dir", str(tiny_siim),
              "--output_dir", str(tmp_path / "train"), "--ckpt_dir", str(tmp_path / "models"), "--max_epochs", "1"]  # fmt: skip
    result = run_bundle([*common, "--config_file", config_files(COMMON, "configs/train.json", TINY),
                         "--network_def#channels", "[4,8,16]"], check=False)  # fmt: skip
    assert result.returncode != 0
    assert "network_def#channels: the network's arguments are in network_config" in result.stderr
    assert "override --network_config#channels instead" in result.stderr
    old_style = tmp_path / "old_network.json"
    old_style.write_text(json.dumps({"network_def": {"_target_": "BasicUNet", **{k: v for k, v in TINY_UNET.items() if k != "target"}}}))
    result = run_bundle([*common, "--config_file", config_files(COMMON, "configs/train.json", TINY, str(old_style))], check=False)
    assert result.returncode != 0
    assert "network_def: a BasicUNet not built from network_config" in result.stderr
    assert not (tmp_path / "models" / "model.pt").exists()


def test_the_label_server_serves_and_fine_tunes_the_network_its_weights_record(tmp_path):
    from monai.bundle import ConfigParser

    from scripts.serving.label_server import prepare_bundle

    weights, _ = _checkpoint(tmp_path, "model", TINY_UNET, seed=0)
    bundle = prepare_bundle(tmp_path / "bundle", weights, [])
    for name in ("train.json", "inference.json"):
        served = json.loads((bundle / "configs" / name).read_text())
        assert served["network_config"] == TINY_UNET
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "train.json"))
    load_weights(parser.get_parsed_content("network_def"), bundle / "models" / "model.pt")  # fits: fine-tunable


# ------------------------------------------------------------------------------------------ the seeds' families
FAMILIES = [
    "unet_resnet34",
    "unet_resnet50",
    "unet_seresnext50",
    "unet_efficientnet",
    "unetplusplus",
    "attention_unet_resnet34",
    "double_unet",
]


def _family_network(family, *files):
    from monai.bundle import ConfigParser

    from tests.conftest import COMMON

    parser = ConfigParser()
    parser.read_config([str(REPO / COMMON), *[str(REPO / f) for f in files], str(REPO / "configs" / "networks" / f"{family}.json")])
    return parser.get_parsed_content("network_def")


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_maps_a_radiograph_to_one_logit_map_and_scripts_to_the_same_outputs(family):
    torch.manual_seed(0)
    network = _family_network(family, "configs/train.json").eval()
    x = torch.rand(2, 1, 64, 96)
    with torch.no_grad():
        y = network(x)
        assert isinstance(y, torch.Tensor) and y.shape == (2, 1, 64, 96)
        torch.testing.assert_close(torch.jit.script(network)(x), y, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["unetplusplus", "attention_unet_resnet34", "double_unet"])
def test_the_families_that_take_any_size_map_an_odd_sized_image_to_a_map_of_its_size(family):
    network = _family_network(family, "configs/train.json").eval()
    with torch.no_grad():
        assert network(torch.rand(1, 1, 65, 77)).shape == (1, 1, 65, 77)


def test_the_double_unets_first_mask_gates_the_second_networks_input_and_learns_through_its_output():
    network = _family_network("double_unet", "configs/train.json")
    network(torch.rand(2, 1, 64, 64)).sum().backward()
    # network 1's mask head reaches the output only through the gate on network 2's input
    assert network.head1.conv.weight.grad.abs().sum() > 0


def test_the_resnet34_encoder_has_torchvisions_layout():
    """The names and shapes of torchvision's ``resnet34`` state dict (without its classifier), so that ImageNet
    weights saved from torchvision fit."""
    from scripts.networks.encoders import ImageNetResNetEncoder

    state = ImageNetResNetEncoder("resnet34-imagenet", in_channels=3).state_dict()
    assert state["conv1.weight"].shape == (64, 3, 7, 7) and "layer2.0.downsample.0.weight" in state
    assert state["layer2.0.downsample.0.weight"].shape == (128, 64, 1, 1) and "layer2.0.downsample.0.bias" not in state
    assert sum(key.startswith("layer3.") and key.endswith(".conv1.weight") for key in state) == 6


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_trains_then_infers_and_exports_from_its_checkpoint_without_the_override(family, tiny_siim, tmp_path):
    from tests.conftest import COMMON, TINY, config_files, run_bundle

    meta = "configs/metadata.json"
    run_bundle(["run", "--config_file", config_files(COMMON, "configs/train.json", TINY, f"configs/networks/{family}.json"),
                "--meta_file", meta, "--dataset_dir", str(tiny_siim), "--output_dir", str(tmp_path / "train"),
                "--ckpt_dir", str(tmp_path / "models"), "--max_epochs", "1"])  # fmt: skip
    recorded = saved_network_config(tmp_path / "models" / "model.pt")
    assert recorded == json.loads((REPO_CONFIGS / "networks" / f"{family}.json").read_text())["network_config"]
    inference = config_files(COMMON, "configs/inference.json")  # the family is read from the checkpoint's record
    run_bundle(["run", "--config_file", inference, "--meta_file", meta, "--dataset_dir", str(tiny_siim / "dicom-images-test"),
                "--output_dir", str(tmp_path / "out"), "--ckpt_dir", str(tmp_path / "models"), "--roi_size", "[64,64]"])  # fmt: skip
    assert len((tmp_path / "out" / "submission.csv").read_text().splitlines()) == 3
    from monai.bundle import ckpt_export, verify_net_in_out  # the Model Zoo commands, in this process (faster)

    ckpt_export("network_def", filepath=str(tmp_path / "model.ts"), ckpt_file=str(tmp_path / "models" / "model.pt"),
                meta_file=str(REPO / meta), config_file=[str(REPO / COMMON), str(REPO_CONFIGS / "inference.json")],
                ckpt_dir=str(tmp_path / "models"), bundle_root=str(REPO))  # fmt: skip
    network = load_weights(network_for(tmp_path / "models" / "model.pt", {}), tmp_path / "models" / "model.pt").eval()
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.load(str(tmp_path / "model.ts"))(x), network(x), atol=1e-5, rtol=1e-5)
    verify_net_in_out("network_def", meta_file=str(REPO / meta), bundle_root=str(REPO),
                      config_file=[str(REPO / COMMON), str(REPO_CONFIGS / "inference.json"), str(REPO_CONFIGS / "networks" / f"{family}.json")])  # fmt: skip


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_gives_a_complete_model_zoo_training_workflow(family, tiny_siim, tmp_path):
    from monai.bundle import ConfigWorkflow

    from tests.conftest import COMMON, TINY

    workflow = ConfigWorkflow(
        config_file=[str(REPO / COMMON), str(REPO / "configs" / "train.json"), TINY,
                     str(REPO / "configs" / "networks" / f"{family}.json")],
        meta_file=str(REPO / "configs" / "metadata.json"), workflow_type="train",
        dataset_dir=str(tiny_siim), output_dir=str(tmp_path / "train"), ckpt_dir=str(tmp_path / "models"),
    )  # fmt: skip
    workflow.initialize()
    assert workflow.check_properties() in (None, [])


def test_encoder_weights_from_a_local_file_start_the_encoder_rgb_summed_for_grey_and_are_not_recorded(tmp_path):
    """Offline pretrained encoders: a torchvision-style ResNet34 state dict (3-channel stem, a classifier)."""
    from scripts.networks.definition import recorded_definition
    from scripts.networks.encoders import ImageNetResNetEncoder

    torch.manual_seed(0)
    saved = ImageNetResNetEncoder("resnet34-imagenet", in_channels=3).state_dict()
    saved |= {"fc.weight": torch.rand(1000, 512), "fc.bias": torch.rand(1000)}  # torchvision's classifier
    torch.save(saved, tmp_path / "resnet34.pth")
    config = {"target": "FlexibleUNet", "spatial_dims": 2, "in_channels": 1, "out_channels": 1,
              "backbone": "resnet34-imagenet", "pretrained": False, "encoder_weights": str(tmp_path / "resnet34.pth")}
    encoder = build_network(config).encoder.state_dict()
    torch.testing.assert_close(encoder["conv1.weight"], saved["conv1.weight"].sum(dim=1, keepdim=True))
    for key in ("layer3.5.conv2.weight", "layer2.0.downsample.0.weight", "bn1.running_mean"):
        torch.testing.assert_close(encoder[key], saved[key])
    assert "encoder_weights" not in recorded_definition(config) and recorded_definition(config)["backbone"] == "resnet34-imagenet"
    del saved["layer4.2.conv2.weight"]
    torch.save(saved, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match=r"partial.pth: no layer4.2.conv2.weight, which the ImageNetResNetEncoder needs"):
        build_network({**config, "encoder_weights": str(tmp_path / "partial.pth")})
    with pytest.raises(ValueError, match="has no encoder to load them into"):
        build_network({**TINY_ATTENTION, "encoder_weights": str(tmp_path / "resnet34.pth")})
    double = build_network({"target": "scripts.networks.double_unet.DoubleUNet", "encoder_weights": str(tmp_path / "resnet34.pth")})
    torch.testing.assert_close(double.encoder.state_dict()["layer3.5.conv2.weight"], saved["layer3.5.conv2.weight"])


def test_the_seresnext50_encoder_takes_imagenet_weights_in_cadenes_layout(tmp_path):
    """``se_resnext50_32x4d-a260b3a4.pth`` (Cadene's ``pretrainedmodels``, which MONAI downloads for SEResNext50)
    names its tensors per block ``convN``, ``bnN``, ``se_module.fc1`` (a 1 x 1 convolution) and ``downsample``;
    a file in that layout starts the encoder of ``unet_seresnext50.json``, its stem summed for grey."""
    from scripts.networks.encoders import SEResNeXt50Encoder

    torch.manual_seed(0)
    own = SEResNeXt50Encoder(in_channels=3).state_dict()
    cadene = {}
    for key, value in own.items():
        if key.endswith("num_batches_tracked"):
            continue  # files saved before PyTorch 0.4.1 have none
        key = key.replace(".conv.", ".").replace(".project.adn.N.", ".downsample.1.").replace(".project.", ".downsample.0.")
        for n in "123":
            key = key.replace(f"conv{n}.adn.N.", f"bn{n}.")
        if ".se_layer.fc." in key:
            key = key.replace("se_layer.fc.0.", "se_module.fc1.").replace("se_layer.fc.2.", "se_module.fc2.")
            value = value.reshape(*value.shape, 1, 1) if value.ndim == 2 else value
        cadene[key] = torch.rand_like(value.float()).to(value.dtype) if value.is_floating_point() else value
    cadene |= {"last_linear.weight": torch.rand(1000, 2048), "last_linear.bias": torch.rand(1000)}
    assert "layer1.0.bn1.weight" in cadene and cadene["layer1.0.se_module.fc1.weight"].shape == (16, 256, 1, 1)
    torch.save(cadene, tmp_path / "se_resnext50_32x4d.pth")
    config = json.loads((REPO_CONFIGS / "networks" / "unet_seresnext50.json").read_text())["network_config"]
    encoder = build_network({**config, "encoder_weights": str(tmp_path / "se_resnext50_32x4d.pth")}).encoder.state_dict()
    torch.testing.assert_close(encoder["layer0.conv1.weight"], cadene["layer0.conv1.weight"].sum(dim=1, keepdim=True))
    torch.testing.assert_close(encoder["layer3.5.conv2.adn.N.running_var"], cadene["layer3.5.bn2.running_var"])
    torch.testing.assert_close(encoder["layer4.0.project.conv.weight"], cadene["layer4.0.downsample.0.weight"])
    torch.testing.assert_close(encoder["layer2.1.se_layer.fc.0.weight"], cadene["layer2.1.se_module.fc1.weight"][:, :, 0, 0])


def test_pretrained_true_starts_the_resnet34_encoder_from_torchvisions_imagenet_file(tmp_path, monkeypatch):
    """``pretrained: true`` reads torchvision's ``resnet34-b627a593.pth`` through ``torch.hub``: downloaded once into
    ``$TORCH_HOME/hub/checkpoints``, where a copy also serves an offline machine (as here)."""
    from scripts.networks.encoders import ImageNetResNetEncoder

    torch.manual_seed(0)
    saved = {key: torch.rand_like(value.float()) if value.is_floating_point() else value
             for key, value in ImageNetResNetEncoder("resnet34-imagenet", in_channels=3).state_dict().items()}  # fmt: skip
    saved |= {"fc.weight": torch.rand(1000, 512), "fc.bias": torch.rand(1000)}
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(saved, tmp_path / "hub" / "checkpoints" / "resnet34-b627a593.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    config = json.loads((REPO_CONFIGS / "networks" / "attention_unet_resnet34.json").read_text())["network_config"]
    network = build_network({**config, "pretrained": True})
    torch.testing.assert_close(network.encoder.state_dict()["conv1.weight"], saved["conv1.weight"].sum(dim=1, keepdim=True))
    torch.testing.assert_close(network.encoder.state_dict()["layer4.2.bn2.weight"], saved["layer4.2.bn2.weight"])
    assert definition_of(network)["pretrained"] is False  # the checkpoint's own weights replace ImageNet's
