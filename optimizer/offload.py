"""Layer-by-layer offload: every transformer block's weights stay in (pinned) host memory and
are copied into one of two device-resident staging blocks just before the block runs.

While block i computes, block i+1 is copied on a side stream, so a step costs about the time
to move all the weights over the host link: what fitting a model too big for the GPU costs."""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from optimizer.model import Transformer


def _tensors(module: nn.Module) -> list[torch.Tensor]:
    return [t.data for t in module.parameters()] + list(module.buffers())


class LayerStreamer:
    def __init__(self, host_blocks: list[nn.Module], device: torch.device):
        self.cuda = device.type == "cuda"
        self.host = [[t.pin_memory() if self.cuda else t for t in _tensors(b)] for b in host_blocks]
        self.slots = [copy.deepcopy(host_blocks[0]).to(device) for _ in range(2)]
        self.slot_tensors = [_tensors(s) for s in self.slots]
        self.n = len(host_blocks)
        if self.cuda:
            self.copy_stream = torch.cuda.Stream(device)
            self.loaded = [torch.cuda.Event(), torch.cuda.Event()]
            self.freed = [torch.cuda.Event(), torch.cuda.Event()]

    def _load(self, i: int) -> None:
        s = i % 2
        if not self.cuda:
            for dst, src in zip(self.slot_tensors[s], self.host[i]):
                dst.copy_(src)
            return
        with torch.cuda.stream(self.copy_stream):
            self.copy_stream.wait_event(self.freed[s])  # the slot's previous block has finished
            for dst, src in zip(self.slot_tensors[s], self.host[i]):
                dst.copy_(src, non_blocking=True)
            self.loaded[s].record(self.copy_stream)

    def run(self, i: int, *args):
        if i == 0:
            self._load(0)
        if i + 1 < self.n:
            self._load(i + 1)
        s = i % 2
        if self.cuda:
            torch.cuda.current_stream().wait_event(self.loaded[s])
        out = self.slots[s](*args)
        if self.cuda:
            self.freed[s].record()
        return out


class OffloadedBlock(nn.Module):
    def __init__(self, streamer: LayerStreamer, index: int):
        super().__init__()
        self.index = index
        self._streamer = [streamer]  # a list, so the staging blocks are not this module's children

    def forward(self, *args):
        return self._streamer[0].run(self.index, *args)


def offload_layers(model: Transformer, device: torch.device | str) -> Transformer:
    """Move everything but the transformer blocks to `device`; stream the blocks from the host.
    The model must be on the CPU when called (that is where the blocks stay)."""
    device = torch.device(device)
    blocks = list(model.layers)
    if any(t.device.type != "cpu" for b in blocks for t in _tensors(b)):
        raise ValueError("offload_layers expects the model on the CPU")
    streamer = LayerStreamer(blocks, device)
    model.layers = nn.ModuleList(OffloadedBlock(streamer, i) for i in range(len(blocks)))
    model.to(device)
    model.offload_streamer = streamer  # plain attribute: keeps the host copies alive
    return model
