"""Optional FP8 matrix products in the layers below the retrieval layer (`ILRe.fp8()`).

On a GPU about 78% of a compiled encode is the bf16 matrix products of the layers below
`l_R` (docs/lab-notes.md, "Where the time goes"). Tensor cores of compute capability 8.9
and newer (Ada, Hopper) multiply ``float8_e4m3fn`` operands at up to twice the bf16 rate.
`Fp8Linear` replaces each `torch.nn.Linear` of decoder layers ``0..l_R-1`` (the attention's
q/k/v/o and the MLP's projections) with one `torch._scaled_mm` (cuBLAS / CUTLASS, as
torchao's rowwise FP8 uses it) under rowwise scales:

- the weight is quantised once, per output channel: row ``n`` of ``W`` becomes
  ``W_q[n] = W[n] / s_w[n]`` in e4m3 with ``s_w[n] = max|W[n]| / 448`` (448 is e4m3's
  largest value), so each row uses the full e4m3 range;
- each activation row (token) is quantised at run time the same way, ``s_x[m] =
  max|x[m]| / 448``, so one outlier token does not crush the resolution of the others;
- ``y[m, n] = s_x[m] * s_w[n] * sum_k X_q[m, k] W_q[n, k]``, accumulated in float32 and
  written in bf16.

The retrieval layer keeps its bf16 projections: its keys are what every recall scores, and
its query projection reads the question; only the hidden states it receives carry the early
layers' FP8 rounding. The embeddings, norms and attention stay bf16. Under `ILRe.compile()`
the quantisation of an activation fuses into the kernel that produced it (the norm, the
SwiGLU product); eagerly it costs a few extra element-wise kernels per projection.
"""

from __future__ import annotations

import torch
from torch import nn

from .errors import ConfigError

FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max
"""448: the largest e4m3 value; a row's largest magnitude maps onto it."""

MIN_CAPABILITY = (8, 9)
"""FP8 tensor cores: Ada (8.9) and Hopper (9.0) onwards."""

_MIN_AMAX = 1e-12
"""Floor of a row's largest magnitude, so an all-zero row gets a finite scale (and zeros)."""

_ALIGNMENT = 16
"""`torch._scaled_mm` needs both dimensions of the weight to be multiples of 16."""


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(values, scales)``: `x` (``(..., K)``) in e4m3 and float32 scales ``(..., 1)`` with
    ``x ≈ values * scales``, each row scaled so its largest magnitude becomes 448."""
    amax = x.abs().amax(dim=-1, keepdim=True).float().clamp_min(_MIN_AMAX)
    scales = amax / FP8_MAX
    # The clamp catches a quotient rounded just past 448: e4m3fn has no infinity, and a cast
    # of anything beyond its range gives NaN.
    values = (x.float() / scales).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return values, scales


class Fp8Linear(nn.Module):
    """`torch.nn.Linear`'s product with e4m3 operands: rowwise-scaled `torch._scaled_mm`.

    Build one with `Fp8Linear.from_linear`. ``weight_fp8`` ``(out, in)`` and ``weight_scale``
    ``(1, out)`` are buffers, not parameters, so the model's ``parameters()`` (its dtype and
    device as transformers and the engine read them) stay those of the bf16 weights.
    """

    def __init__(
        self,
        weight_fp8: torch.Tensor,
        weight_scale: torch.Tensor,
        bias: torch.Tensor | None,
        out_dtype: torch.dtype,
        fast_accum: bool = False,
    ) -> None:
        super().__init__()
        self.in_features = weight_fp8.shape[1]
        self.out_features = weight_fp8.shape[0]
        self.out_dtype = out_dtype
        # The FP8 kernels' fast accumulation is faster but keeps fewer bits of the running
        # sum on Hopper (it is promoted to float32 less often): off unless asked for.
        self.fast_accum = fast_accum
        self.register_buffer("weight_fp8", weight_fp8)
        self.register_buffer("weight_scale", weight_scale)
        self.register_buffer("bias", bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Fp8Linear:
        """Quantise `linear`'s weight per output channel (`quantize_rows`)."""
        weight = linear.weight.detach()
        values, scales = quantize_rows(weight)
        bias = None if linear.bias is None else linear.bias.detach().clone()
        return cls(values, scales.reshape(1, -1).contiguous(), bias, weight.dtype)

    def dequantized_weight(self) -> torch.Tensor:
        """The float32 weight this module multiplies by: ``weight_fp8 * weight_scale``."""
        return self.weight_fp8.float() * self.weight_scale.reshape(-1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        values, scales = quantize_rows(rows)
        out = torch._scaled_mm(
            values,
            self.weight_fp8.t(),  # column-major, as the FP8 kernels need their second operand
            scale_a=scales,
            scale_b=self.weight_scale,
            out_dtype=self.out_dtype,
            use_fast_accum=self.fast_accum,
        )
        # The bias is added apart: `_scaled_mm`'s own bias argument accepts fewer dtype
        # combinations across torch versions, and under compile the add fuses anyway.
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, fast_accum={self.fast_accum}"
        )


def require_fp8(device: torch.device) -> None:
    """Raise `ConfigError` unless `device` is a CUDA GPU with FP8 tensor cores."""
    if device.type != "cuda":
        raise ConfigError(
            f"FP8 needs a CUDA GPU of compute capability {'.'.join(map(str, MIN_CAPABILITY))} "
            f"or newer (Ada, Hopper, Blackwell); the model is on {device}"
        )
    capability = torch.cuda.get_device_capability(device)
    if capability < MIN_CAPABILITY:
        raise ConfigError(
            f"FP8 needs compute capability {'.'.join(map(str, MIN_CAPABILITY))} or newer; "
            f"{torch.cuda.get_device_name(device)} has {'.'.join(map(str, capability))}"
        )


def trunk_linears(model: nn.Module, layer: int) -> list[tuple[nn.Module, str, nn.Linear]]:
    """``(parent, attribute, linear)`` for every `nn.Linear` of decoder layers ``0..layer-1``
    of `model` (a base model with ``.layers``): what `quantize_trunk` replaces."""
    found = []
    for block in model.layers[:layer]:
        for parent in block.modules():
            for name, child in parent.named_children():
                if isinstance(child, nn.Linear):
                    found.append((parent, name, child))
    return found


def swap_linears(model: nn.Module, layer: int) -> int:
    """Replace the `trunk_linears` of `model` below `layer` by `Fp8Linear` in place, on any
    device (`quantize_trunk` checks the device first); returns how many were replaced.

    Raises `ConfigError` for a weight that is not bf16 or whose shape `torch._scaled_mm`
    cannot take, before replacing anything.
    """
    linears = trunk_linears(model, layer)
    for parent, name, linear in linears:
        if linear.weight.dtype != torch.bfloat16:
            raise ConfigError(
                f"FP8 needs a bfloat16 model (its products are written in bf16); "
                f"{type(parent).__name__}.{name} is {linear.weight.dtype}"
            )
        if linear.in_features % _ALIGNMENT or linear.out_features % _ALIGNMENT:
            raise ConfigError(
                f"FP8 needs projection widths that are multiples of {_ALIGNMENT}; "
                f"{type(parent).__name__}.{name} is {linear.in_features} -> "
                f"{linear.out_features}"
            )
    with torch.no_grad():
        for parent, name, linear in linears:
            setattr(parent, name, Fp8Linear.from_linear(linear))
    return len(linears)


def quantize_trunk(model: nn.Module, layer: int, *, fast_accumulation: bool = False) -> int:
    """Switch decoder layers ``0..layer-1`` of `model` to FP8 products (see the module's
    docstring); the retrieval layer `layer` stays as it is. `fast_accumulation` sets the
    kernels' fast accumulation on every FP8 projection of those layers, also ones an earlier
    call made. Refuses with `ConfigError` on a device without FP8 tensor cores
    (`require_fp8`). Returns how many projections were replaced (none when it already ran)."""
    require_fp8(next(model.parameters()).device)
    replaced = swap_linears(model, layer)
    for block in model.layers[:layer]:
        for module in block.modules():
            if isinstance(module, Fp8Linear):
                module.fast_accum = fast_accumulation
    return replaced
