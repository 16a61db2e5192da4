"""Weight quantization: small pure primitives first, then each scheme as a module swap.

Schemes (`quantize_model(model, scheme)`):
- "gemv": nothing quantized; bf16 weights whose decode-sized matmuls go through the Triton GEMV
  of int8_gemv.py (kernels fixed by Triton's autotuner, not by Inductor's per-process tuning).
- "int8-weight-only": per-output-channel int8 weights, bf16/fp32 activations. Its forward is
  gpt-fast's one line, which `torch.compile` fuses into the matmul; at decode sizes on a GPU it is
  the Triton GEMV of int8_gemv.py instead, which reads each int8 weight once at full bandwidth.
- "fp8": per-channel float8 e4m3 weights and per-token float8 activations through
  `torch._scaled_mm` on a GPU with fp8 units; elsewhere the same rounding, emulated in fp32.
- "int8-dynamic": `torch.ao.quantization.quantize_dynamic` (CPU only; int8 activations too).
- "torchao-int8-weight-only", "torchao-fp8": torchao's configs, when torchao is importable.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from optimizer import int8_gemv

FP8_MAX = 448.0  # largest finite float8_e4m3fn


def quantize_per_channel(w: Tensor, bits: int = 8) -> tuple[Tensor, Tensor]:
    """Symmetric absmax quantization per output row: (integers stored as int8, fp32 scales [out])."""
    qmax = 2 ** (bits - 1) - 1
    scales = (w.float().abs().amax(dim=1) / qmax).clamp(min=1e-8)
    q = torch.clamp(torch.round(w.float() / scales[:, None]), -qmax - 1, qmax).to(torch.int8)
    return q, scales


def quantize_fp8_rows(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-row float8 e4m3 with fp32 scales [rows, 1]."""
    scales = (x.float().abs().amax(dim=-1, keepdim=True) / FP8_MAX).clamp(min=1e-12)
    return (x.float() / scales).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn), scales


class WeightOnlyInt8Linear(nn.Module):
    def __init__(self, in_features: int, out_features: int, dtype: torch.dtype,
                 device: torch.device | str = "cpu"):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.empty(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("scales", torch.empty(out_features, dtype=dtype, device=device))

    @classmethod
    def from_linear(cls, linear: nn.Linear, bits: int = 8) -> WeightOnlyInt8Linear:
        w = linear.weight.detach()
        module = cls(linear.in_features, linear.out_features, w.dtype, w.device)
        q, scales = quantize_per_channel(w, bits)
        module.weight.copy_(q)
        module.scales.copy_(scales.to(w.dtype))
        return module

    def forward(self, x: Tensor) -> Tensor:
        if int8_gemv.ENABLED and int8_gemv.gemv_applies(x, self.weight):
            return torch.ops.gpucost.int8_gemv(x, self.weight, self.scales)
        return F.linear(x, self.weight.to(x.dtype)) * self.scales


class GemvLinear(nn.Module):
    """A bf16/fp16 linear layer whose decode-sized calls go through the Triton GEMV (the
    "gemv" scheme: nothing is quantized; the weights stay as they are)."""

    def __init__(self, weight: Tensor):
        super().__init__()
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        self.register_buffer("weight", weight.detach().contiguous())

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> GemvLinear:
        if linear.bias is not None:
            raise ValueError("the GEMV has no bias term")
        return cls(linear.weight)

    def forward(self, x: Tensor) -> Tensor:
        if int8_gemv.ENABLED and int8_gemv.gemv_applies(x, self.weight):
            return torch.ops.gpucost.gemv(x, self.weight)
        return F.linear(x, self.weight)


class Float8Linear(nn.Module):
    def __init__(self, in_features: int, out_features: int, device: torch.device | str = "cpu"):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.empty(out_features, in_features, dtype=torch.float8_e4m3fn,
                                                   device=device))
        self.register_buffer("scales", torch.empty(1, out_features, dtype=torch.float32, device=device))

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Float8Linear:
        module = cls(linear.in_features, linear.out_features, linear.weight.device)
        q, scales = quantize_fp8_rows(linear.weight.detach())
        module.weight.copy_(q)
        module.scales.copy_(scales.t())
        return module

    def forward(self, x: Tensor) -> Tensor:
        x2 = x.reshape(-1, self.in_features)
        xq, x_scales = quantize_fp8_rows(x2)
        if x.is_cuda:
            out = torch._scaled_mm(xq, self.weight.t(), scale_a=x_scales, scale_b=self.scales,
                                   out_dtype=x.dtype)
        else:  # same rounding, emulated: lets the accuracy gate judge fp8 on a CPU
            out = ((xq.float() * x_scales) @ (self.weight.float() * self.scales.t()).t()).to(x.dtype)
        return out.reshape(*x.shape[:-1], self.out_features)


def _swap_linears(module: nn.Module, make) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.Linear):
            setattr(module, name, make(child))
        else:
            _swap_linears(child, make)


def fp8_supported(device: torch.device | str) -> bool:
    device = torch.device(device)
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


def torchao_available() -> bool:
    try:
        import torchao  # noqa: F401
    except Exception:
        return False
    return True


SCHEMES = ("none", "gemv", "int8-weight-only", "fp8", "int8-dynamic", "torchao-int8-weight-only", "torchao-fp8")


def quantize_model(model: nn.Module, scheme: str, bits: int = 8) -> nn.Module:
    """Swap the model's linear layers (attention, feed-forward, output head) in place.

    `bits` is for tests only: "int8-weight-only" with bits=2 is a deliberately broken
    quantization that the accuracy gate must reject."""
    if scheme == "none":
        return model
    if scheme == "gemv":
        _swap_linears(model, GemvLinear.from_linear)
    elif scheme == "int8-weight-only":
        _swap_linears(model, lambda lin: WeightOnlyInt8Linear.from_linear(lin, bits))
    elif scheme == "fp8":
        _swap_linears(model, Float8Linear.from_linear)
    elif scheme == "int8-dynamic":
        device = next(model.parameters()).device
        if device.type != "cpu":
            raise ValueError("int8-dynamic is a CPU scheme (torch.ao quantize_dynamic)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # quantize_dynamic is deprecated but still shipped
            model = torch.ao.quantization.quantize_dynamic(model.float(), {nn.Linear}, dtype=torch.qint8,
                                                           inplace=True)
    elif scheme in ("torchao-int8-weight-only", "torchao-fp8"):
        if not torchao_available():
            raise RuntimeError(f"{scheme} needs torchao, which is not importable here")
        from torchao.quantization import quantize_

        if scheme == "torchao-int8-weight-only":
            from torchao.quantization import Int8WeightOnlyConfig as config_cls
            config = config_cls()
        else:
            from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow
            config = Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())
        quantize_(model, config)
    else:
        raise ValueError(f"unknown quantization scheme {scheme!r}; expected one of {SCHEMES}")
    return model
