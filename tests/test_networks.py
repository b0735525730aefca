"""Networks defined as data: built from a definition, recorded beside the weights, and mixed in one ensemble."""

import json

import pytest
import torch

from scripts.inference.ensemble import AveragedProbabilities
from scripts.networks.definition import build_network, network_for, saved_network_config
from scripts.training.checkpoints import load_weights

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
