"""The trunk: a megatron-core GPTModel over continuous tokens (InternLM-style decoder).

Tokens enter through `decoder_input` ([s, b, h]) as in LLaVA's `forward_lm_only`; GPTModel is
built with `post_process=False` (no vocabulary projection), which also drops the block's final
norm, so the trunk adds its own RMSNorm built from the same family as the layer spec.
"""

from __future__ import annotations

import torch
from megatron.core.models.gpt import GPTModel
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_config import TransformerConfig
from torch import nn

from megatron_ego.config import ModelConfig
from megatron_ego.model.attention import SDPAttention
from megatron_ego.model.cpu import make_rope_cpu_safe
from megatron_ego.model.fused import (
    FusedRMSNorm,
    get_residual_add,
    set_compile,
    swiglu_mlp_spec,
    use_swiglu_mlp,
)
from megatron_ego.model.packing import Segments
from megatron_ego.model.parallel import ensure_model_parallel
from megatron_ego.model.transformer_config import transformer_config


def transformer_engine_available() -> bool:
    """True when Transformer Engine imports (GPU images). Never installed on CPU machines."""
    try:
        import transformer_engine  # noqa: F401
        import transformer_engine.pytorch  # noqa: F401
    except Exception:  # ImportError, or a CUDA-less machine where TE fails to load its library
        return False
    return True


def resolve_transformer_impl(cfg: ModelConfig) -> str:
    """'auto' -> 'transformer_engine' where TE imports, else 'local'."""
    if cfg.transformer_impl == "auto":
        return "transformer_engine" if transformer_engine_available() else "local"
    if cfg.transformer_impl == "transformer_engine" and not transformer_engine_available():
        raise RuntimeError(
            "model.transformer_impl=transformer_engine but transformer_engine does not import; "
            "use the Docker image (GPU) or set --model.transformer_impl=local"
        )
    return cfg.transformer_impl


def build_layer_spec(cfg: ModelConfig) -> tuple[ModuleSpec, str]:
    """One TransformerLayer spec: TE modules, or megatron-core local modules with SDPAttention.

    The attention mask type is `causal` (TE then uses its own causal kernel and ignores the mask)
    unless `frame_bidirectional`, which needs an arbitrary mask.
    """
    impl = resolve_transformer_impl(cfg)
    if impl == "transformer_engine":
        from megatron.core.models.gpt.gpt_layer_specs import (
            get_gpt_layer_with_transformer_engine_spec,
        )

        spec = get_gpt_layer_with_transformer_engine_spec()
        name = "transformer_engine"
    else:
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

        # Local spec with our fused element-wise modules (model/fused.py): RMSNorm as one
        # autograd node, RoPE inside the core attention on tables computed once per length
        # (GPTModel then runs without its own rotary embedding), SwiGLU as one node, residual
        # adds without a dropout of probability 0. Same weights and state-dict keys as the plain local spec.
        spec = get_gpt_layer_local_spec(normalization="RMSNorm")
        sub = spec.submodules
        sub.self_attention.submodules.core_attention = ModuleSpec(
            module=SDPAttention, params={"rotary_base": cfg.rotary_base})
        sub.input_layernorm = sub.pre_mlp_layernorm = FusedRMSNorm
        sub.self_attn_bda = sub.mlp_bda = get_residual_add
        sub.mlp = swiglu_mlp_spec(sub.mlp)  # built as megatron's own MLP (its tp_group)
        name = "local+sdpa"
    mask_type = AttnMaskType.arbitrary if cfg.frame_bidirectional else AttnMaskType.causal
    spec.submodules.self_attention.params = {
        **spec.submodules.self_attention.params,
        "attn_mask_type": mask_type,
    }
    return spec, name


def build_final_norm(config: TransformerConfig, impl: str) -> nn.Module:
    """The trunk's last RMSNorm, from the same implementation family as the layers."""
    if impl == "transformer_engine":
        from megatron.core.extensions.transformer_engine import TENorm

        return TENorm(config=config, hidden_size=config.hidden_size, eps=config.layernorm_epsilon)
    return FusedRMSNorm(config=config, hidden_size=config.hidden_size, eps=config.layernorm_epsilon)


def checkpoint_layers(layers: nn.ModuleList) -> None:
    """Full activation recomputation of every layer, with torch's non-reentrant checkpoint.

    megatron-core's own `recompute_granularity='full'` is reentrant: each checkpointed layer runs
    a nested backward that accumulates into the weights at once. The student calls the trunk
    several times per micro-batch (the sequence, global crops, local crops), so every weight
    would receive several separate accumulations, which DeepSpeed ZeRO-2's reduction hooks reject
    ("Gradient computed twice for this partition"; seen on an H100). Non-reentrant checkpointing
    stays in the one autograd graph: each weight's gradient is summed, then accumulated once.
    """
    for layer in layers:
        def forward(*args, _forward=layer.forward, **kwargs):
            if not torch.is_grad_enabled():
                return _forward(*args, **kwargs)
            return torch.utils.checkpoint.checkpoint(_forward, *args, use_reentrant=False,
                                                     **kwargs)

        layer.forward = forward


class Backbone(nn.Module):
    """GPTModel trunk + final RMSNorm: [s, b, h] continuous tokens -> [s, b, h] normed states."""

    def __init__(self, cfg: ModelConfig, max_sequence_length: int, precision: str = "fp32"):
        super().__init__()
        ensure_model_parallel()
        spec, self.spec_name = build_layer_spec(cfg)
        self.config = transformer_config(
            cfg, bf16=precision == "bf16", fp16=precision == "fp16",
            transformer_engine=self.spec_name == "transformer_engine",
        )
        self.gpt = GPTModel(
            config=self.config,
            transformer_layer_spec=spec,
            vocab_size=1,  # unused: tokens are continuous and enter through decoder_input
            max_sequence_length=max_sequence_length,
            pre_process=True,  # pre_process=False would read a pipeline input tensor instead
            post_process=False,  # no vocabulary projection; returns [s, b, h]
            # the local spec applies RoPE in SDPAttention (model/fused.py)
            position_embedding_type="rope" if self.spec_name == "transformer_engine" else "none",
            rotary_base=cfg.rotary_base,
        )
        if self.spec_name == "local+sdpa":
            use_swiglu_mlp(self.gpt)  # megatron-core <= 0.17: the spec had to name MLP itself
        # GPTModel builds a word embedding whenever pre_process=True; it is never called.
        self.gpt.embedding.requires_grad_(False)
        if self.spec_name == "transformer_engine":
            make_rope_cpu_safe(self.gpt.rotary_pos_emb)
        set_compile(cfg.compile_elementwise)
        impl = "transformer_engine" if self.spec_name == "transformer_engine" else "local"
        self.final_norm = build_final_norm(self.config, impl)
        if cfg.recompute:
            checkpoint_layers(self.gpt.decoder.layers)

    def forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor | None,
                segments: Segments | None = None) -> torch.Tensor:
        """tokens [s, b, h]; attention_mask bool [1 or b, 1, s, s] (True = masked) -> [s, b, h].

        None means plain causal attention: both SDPAttention (is_causal, flash kernels on GPU)
        and Transformer Engine then use their own causal masking; an explicit mask is only
        needed for `frame_bidirectional` (the spec's mask type is then `arbitrary`).
        With `segments`, tokens are several sequences packed [N, 1, h] (`forward_packed`).
        """
        hidden = self.gpt(
            input_ids=None, position_ids=None, attention_mask=attention_mask, decoder_input=tokens,
            packed_seq_params=segments,
        )  # [s, b, h]
        return self.final_norm(hidden)  # [s, b, h]

    @property
    def packs(self) -> bool:
        """Whether `forward_packed` packs: the local spec's attention runs segments; Transformer
        Engine's attention would need its own packed format, so TE trunks run call by call."""
        return self.spec_name == "local+sdpa"

    def forward_packed(self, seqs: list[torch.Tensor], masks: list[torch.Tensor | None]
                       ) -> list[torch.Tensor]:
        """Several token sequences x_i [b_i, s_i, h] (masks as in `forward`) through the trunk in
        one call (model/packing.py) -> [b_i, s_i, h] each; the same values as one call each."""
        if not self.packs:
            return [self(x.transpose(0, 1).contiguous(), m).transpose(0, 1)
                    for x, m in zip(seqs, masks)]
        segments = Segments.of(seqs, masks)
        return segments.unpack(self(segments.pack(seqs), None, segments))

    def trunk_parameters(self) -> int:
        """Parameters of the transformer layers and the final norm (the paper's 'param.')."""
        layers = sum(p.numel() for p in self.gpt.decoder.parameters())
        return layers + sum(p.numel() for p in self.final_norm.parameters())
