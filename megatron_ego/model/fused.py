"""Fused element-wise work of the trunk's local spec: RMSNorm, RoPE, SwiGLU, the residual add.

megatron-core's local modules run these as chains of small operators: torch's RMSNorm is
composite (cast, pow, mean, add, rsqrt, two products, and about 35 operators in its backward);
`rope_utils.apply_rotary_pos_emb` computes cos and sin of the frequency table in every layer and
call, and rotates with a negation and a concatenation; the bias-dropout-add runs a dropout of
probability 0. Here each is one autograd node with a written-out backward, on tables computed
once per sequence length: about a third of the operators, the same arithmetic (in fp32 the
results agree to rounding; sums may be ordered differently).

    y = rms_norm(x, weight, eps)                 # [..., h]
    q = rotary(q, *rope_tables(s, d, base, q.dtype, q.device))   # [s, b, n, d]

`set_compile(True)` (model.compile_elementwise) also runs the bodies through torch.compile,
one generated kernel each (meant for GPUs; on CPU it needs a C++ compiler and minutes).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from megatron.core.transformer.mlp import MLP
from megatron.core.transformer.module import MegatronModule

_COMPILE = {"on": False, "fns": {}}


def set_compile(on: bool) -> None:
    """Run the element-wise bodies through torch.compile (True) or eagerly (False)."""
    _COMPILE["on"] = bool(on)


def _fn(f):
    """`f`, or its torch.compile'd version when compilation is on (compiled once)."""
    if not _COMPILE["on"]:
        return f
    fns = _COMPILE["fns"]
    if f not in fns:
        fns[f] = torch.compile(f, dynamic=True)
    return fns[f]


# ----------------------------------------------------------------------------------- RMSNorm
_EPS: dict[tuple, torch.Tensor] = {}


def _eps(eps: float, device: torch.device) -> torch.Tensor:
    """eps as a 0-dim fp32 tensor on `device`, made once (a Python number would be wrapped
    into a new tensor at every use)."""
    key = (eps, str(device))
    if key not in _EPS:
        _EPS[key] = torch.full((), eps, dtype=torch.float32, device=device)
    return _EPS[key]


def _wide(t: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 -> fp32; fp32 and fp64 as they are."""
    return t.float() if t.element_size() < 4 else t


def _rms_forward(x: torch.Tensor, weight: torch.Tensor, eps: torch.Tensor):
    xf = _wide(x)
    norm = torch.linalg.vector_norm(xf, dim=-1, keepdim=True)  # [..., 1]
    rstd = torch.addcmul(eps, norm, norm, value=1.0 / x.shape[-1]).rsqrt_()  # mean(x^2) + eps
    return (xf * rstd).type_as(x) * weight, rstd


def _rms_backward(g: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor):
    xhat = _wide(x) * rstd  # [..., h]
    gf = _wide(g)
    gw = gf * _wide(weight)
    dot = (gw * xhat).sum(-1, keepdim=True)  # [..., 1]
    dx = torch.addcmul(gw, xhat, dot, value=-1.0 / x.shape[-1]).mul_(rstd)
    dw = (gf * xhat).sum(dim=tuple(range(g.dim() - 1)))
    return dx.type_as(x), dw.type_as(weight)


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps):
        y, rstd = _fn(_rms_forward)(x, weight, _eps(eps, x.device))
        ctx.save_for_backward(x, weight, rstd)
        return y

    @staticmethod
    def backward(ctx, g):
        x, weight, rstd = ctx.saved_tensors
        dx, dw = _fn(_rms_backward)(g, x, weight, rstd)
        return dx, dw, None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x [..., h] * rsqrt(mean(x^2) + eps) * weight [h] (statistics in fp32)."""
    return _RMSNorm.apply(x, weight, eps)


class FusedRMSNorm(MegatronModule):
    """Drop-in for megatron's WrappedTorchNorm (RMSNorm) in the local layer spec: the same
    `weight` parameter (checkpoints are interchangeable), one fused autograd node."""

    def __init__(self, config, hidden_size: int, eps: float = 1e-5):
        super().__init__(config=config)
        self.eps = eps
        dtype = config.params_dtype
        self.weight = torch.nn.Parameter(torch.ones(hidden_size, dtype=dtype))
        self.weight.sequence_parallel = config.sequence_parallel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


# -------------------------------------------------------------------------------------- RoPE
_TABLES: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def rope_tables(seq_len: int, dim: int, base: float, dtype: torch.dtype,
                device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [s, 1, 1, d] of positions 0..s-1, computed as megatron-core's RotaryEmbedding
    (non-interleaved halves, rotary_percent 1) computes them, once per (s, d, base, dtype,
    device) for the whole run."""
    key = (seq_len, dim, float(base), dtype, str(device))
    if key not in _TABLES:
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32, device=device)
                                   / dim))  # [d/2]
        seq = torch.arange(seq_len, device=device, dtype=inv_freq.dtype)  # [s]
        freqs = torch.outer(seq, inv_freq)  # [s, d/2]
        emb = torch.cat((freqs, freqs), dim=-1)[:, None, None, :]  # [s, 1, 1, d]
        _TABLES[key] = (torch.cos(emb).to(dtype), torch.sin(emb).to(dtype))
    return _TABLES[key]


def _rope_forward(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """t * cos + rotate_half(t) * sin, rotate_half(t) = [-t2, t1]."""
    h = t.shape[-1] // 2
    out = t * cos
    out[..., :h].addcmul_(t[..., h:], sin[..., :h], value=-1)
    out[..., h:].addcmul_(t[..., :h], sin[..., h:])
    return out


def _rope_backward(g: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The transpose: g * cos + [g2 * sin2, -g1 * sin1]."""
    h = g.shape[-1] // 2
    dt = g * cos
    dt[..., :h].addcmul_(g[..., h:], sin[..., h:])
    dt[..., h:].addcmul_(g[..., :h], sin[..., :h], value=-1)
    return dt


class _Rotary(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t, cos, sin):
        ctx.save_for_backward(cos, sin)
        return _fn(_rope_forward)(t, cos, sin)

    @staticmethod
    def backward(ctx, g):
        cos, sin = ctx.saved_tensors
        return _fn(_rope_backward)(g, cos, sin), None, None


def rotary(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding of t [s, b, n, d] with tables [s, 1, 1, d]."""
    return _Rotary.apply(t, cos, sin)


# ------------------------------------------------------------------------------------ SwiGLU
def _swiglu_backward(g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    da = torch.ops.aten.silu_backward(g * b, a)
    return torch.cat([da, F.silu(a) * g], dim=-1)


class _SwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        a, b = x.chunk(2, dim=-1)
        return F.silu(a).mul_(b)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return _fn(_swiglu_backward)(g, x)


def swiglu(x: torch.Tensor) -> torch.Tensor:
    """silu(x1) * x2 of the halves of x [..., 2f] -> [..., f]."""
    return _SwiGLU.apply(x)


class SwiGLUMLP(MLP):
    """megatron-core's MLP (same submodules, weights and constructor) with the SwiGLU as one
    autograd node; megatron's unfused path computes `silu(x1) * (x2 + 0.0)`, a copy and three
    more nodes. Only `forward` differs. Put in a layer spec with `swiglu_mlp_spec`, so that
    megatron builds it as its own MLP."""

    def forward(self, hidden_states, per_token_scale=None, **kwargs):
        if (per_token_scale is not None or self.config.bias_activation_fusion
                or not self.config.gated_linear_unit or self.config.activation_func is not F.silu
                or self.config.activation_func_clamp_value is not None
                or self.config.glu_linear_offset != 0.0):
            return super().forward(hidden_states, per_token_scale, **kwargs)
        intermediate, bias = self.linear_fc1(hidden_states)  # [s, b, 2f]
        if bias is not None:
            intermediate = intermediate + bias
        return self.linear_fc2(swiglu(intermediate))  # ([s, b, h], bias)


def swiglu_mlp_spec(mlp):
    """A layer spec's `mlp` entry (megatron's MLP) -> the entry that gives the layer a SwiGLUMLP
    with what megatron-core passes its own MLP (the layer's tensor-parallel group):

    - megatron-core >= 0.18 builds the MLP with a builder called with the layer's process groups,
      `partial(MLP.as_mlp_submodule, submodules=...)`: the same classmethod, bound to SwiGLUMLP;
    - up to 0.17 a ModuleSpec: the layer passes `tp_group` only when the spec's module IS `MLP`
      (transformer_layer.py compares with ==; any other class, a subclass too, is logged as
      "Unknown MLP type ... Using default kwargs" and gets no group). The spec stays MLP, and
      `use_swiglu_mlp` turns the built MLPs into SwiGLUMLPs.
    """
    if isinstance(mlp, functools.partial) and getattr(mlp.func, "__self__", None) is MLP:
        return functools.partial(SwiGLUMLP.as_mlp_submodule, *mlp.args, **mlp.keywords)
    return mlp


def use_swiglu_mlp(model: torch.nn.Module) -> int:
    """Make every megatron MLP built from a `swiglu_mlp_spec` ModuleSpec (megatron-core <= 0.17)
    a SwiGLUMLP: a subclass with no state of its own, so only `forward` changes (weights, state-dict
    keys, tensor-parallel group stay). Returns how many changed."""
    count = 0
    for module in model.modules():
        if type(module) is MLP:
            module.__class__ = SwiGLUMLP
            count += 1
    return count


# ------------------------------------------------------------------------------ residual add
def _residual_add(x_with_bias, residual: torch.Tensor, prob: float) -> torch.Tensor:
    x, bias = x_with_bias
    if bias is not None:
        x = x + bias
    return residual + x


def get_residual_add(training: bool, fused: bool):
    """The layer spec's bias-dropout-add where dropout is 0 (the trunk's: hidden_dropout=0):
    residual + x (+ bias), without a dropout operator. megatron's own with dropout > 0."""
    from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add

    megatron_bda = get_bias_dropout_add(training, fused)

    def bda(x_with_bias, residual, prob):
        if prob > 0 and training:
            return megatron_bda(x_with_bias, residual, prob)
        return _residual_add(x_with_bias, residual, prob)

    return bda
