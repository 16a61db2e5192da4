"""Layer-by-layer offload computes what the resident model computes."""

import torch

from optimizer.generate import generate
from optimizer.model import build_model
from optimizer.offload import OffloadedBlock, offload_layers


def test_offloaded_model_generates_the_same_tokens():
    prompts = [[1, 2, 3, 4], [5, 6]]
    resident = generate(build_model("test"), prompts, 10).tokens
    model = offload_layers(build_model("test"), "cpu")
    assert all(isinstance(layer, OffloadedBlock) for layer in model.layers)
    assert list(model.layers[0].parameters()) == []  # the weights live with the streamer
    assert generate(model, prompts, 10).tokens == resident
    idx = torch.arange(6).view(1, -1)
    model.clear_caches()
    assert torch.allclose(model(idx), build_model("test")(idx), atol=1e-6)
