"""The trunk's megatron-core TransformerConfig, built from the typed ModelConfig."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_ego.config import ConfigError, ModelConfig
from megatron_ego.runtime.device import cuda_available


def transformer_config(cfg: ModelConfig, *, bf16: bool = False, fp16: bool = False,
                       transformer_engine: bool = False) -> TransformerConfig:
    """megatron-core TransformerConfig for the trunk, every field set explicitly.

    `transformer_engine`: the TE layer spec is used, so megatron's fused kernels are
    available: fused RoPE (TE's) and the fused SwiGLU. Without them, RoPE and SwiGLU run as
    separate element-wise kernels, which took ~45% of the GPU time of a 300M step on an
    H100 (docs/benchmarks.md). FP8 needs TE's layers: `cfg.fp8` without them is refused.
    """
    if cfg.fp8 and not transformer_engine:
        raise ConfigError("model.fp8=true needs the Transformer Engine layer spec "
                          "(model.transformer_impl=transformer_engine, GPU image); set "
                          "--model.fp8=false")
    params_dtype = torch.bfloat16 if bf16 else torch.float16 if fp16 else torch.float32
    fp8 = {}
    if cfg.fp8:
        fp8 = dict(fp8="hybrid", fp8_recipe="delayed", fp8_amax_history_len=1024,
                   fp8_amax_compute_algo="max")
    return TransformerConfig(
        num_layers=cfg.num_layers,
        hidden_size=cfg.hidden_size,
        num_attention_heads=cfg.num_attention_heads,
        ffn_hidden_size=cfg.ffn_hidden_size,
        kv_channels=cfg.hidden_size // cfg.num_attention_heads,
        normalization="RMSNorm",
        layernorm_epsilon=cfg.norm_epsilon,
        gated_linear_unit=True,  # SwiGLU
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=cfg.init_method_std,
        bf16=bf16,
        fp16=fp16,
        params_dtype=params_dtype,
        # The fusions are CUDA kernels: off unless TE's layers run (docs/environment.md).
        apply_rope_fusion=transformer_engine,
        # fused SwiGLU (no bias to add): megatron's own kernel with TE, else torch.compile
        bias_activation_fusion=transformer_engine or cfg.compile_elementwise,
        bias_dropout_fusion=False,
        masked_softmax_fusion=False,
        gradient_accumulation_fusion=False,
        persist_layer_norm=False,
        use_cpu_initialization=not cuda_available(),
        tensor_model_parallel_size=1,
        pipeline_model_parallel_size=1,
        **fp8,
    )
