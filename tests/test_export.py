"""Model Zoo exports of network_def: TorchScript (ckpt_export) and ONNX (onnx_export), checked against PyTorch."""

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from tests.conftest import COMMON, REPO, config_files, run_bundle

SMALL = ["--network_config#channels", "[4,8,16,32,64]"]
INFERENCE = config_files(COMMON, "configs/inference.json")


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    """A randomly initialised AttentionUnet (small channels) saved as a plain state dict, and the network."""
    folder = tmp_path_factory.mktemp("export")
    parser = ConfigParser()
    parser.read_config([str(REPO / COMMON), str(REPO / "configs" / "inference.json")])
    parser["network_config"]["channels"] = [4, 8, 16, 32, 64]
    torch.manual_seed(0)
    network = parser.get_parsed_content("network_def").eval()
    torch.save(network.state_dict(), folder / "model.pt")
    return folder, network


def _export(command: str, folder, filepath, *extra: str) -> None:
    run_bundle(
        [
            command,
            "network_def",
            "--filepath",
            str(filepath),
            "--ckpt_file",
            str(folder / "model.pt"),
            "--meta_file",
            "configs/metadata.json",
            "--config_file",
            INFERENCE,
            *SMALL,
            *extra,
        ]
    )


@pytest.mark.slow
def test_torchscript_export_matches_pytorch(small_model):
    folder, network = small_model
    _export("ckpt_export", folder, folder / "model.ts")
    exported = torch.jit.load(str(folder / "model.ts"))
    x = torch.rand(1, 1, 128, 96)
    with torch.no_grad():
        torch.testing.assert_close(exported(x), network(x), atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_onnx_export_matches_pytorch_in_onnxruntime(small_model):
    import onnxruntime

    folder, network = small_model
    _export("onnx_export", folder, folder / "model.onnx", "--input_shape", "[1,1,128,128]")
    session = onnxruntime.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    x = torch.rand(1, 1, 128, 128)
    (onnx_out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        expected = network(x).numpy()
    assert onnx_out.shape == expected.shape
    np.testing.assert_allclose(onnx_out, expected, atol=1e-4, rtol=1e-3)


@pytest.mark.slow
def test_model_zoo_verify_net_in_out_passes():
    """The Model Zoo CI check: network_def takes metadata's inputs.image and gives its outputs.pred."""
    result = run_bundle(
        ["verify_net_in_out", "network_def", "--meta_file", "configs/metadata.json", "--config_file", INFERENCE]
    )
    assert "verified with no error" in result.stdout + result.stderr
