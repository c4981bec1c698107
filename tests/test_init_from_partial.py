"""run.init_from from a trunk of another depth (issue 23 item 7): refused unless
run.init_from_partial allows it; then exactly the layers both have are loaded."""

from __future__ import annotations

import copy
import logging

import pytest
import torch

from megatron_ego.config import ConfigError
from megatron_ego.model.egoagent import EgoAgent
from megatron_ego.training.init_from import InitSource, check_model_config, load_shared


def _source(cfg, layers: int) -> tuple[InitSource, dict[str, torch.Tensor]]:
    model = copy.deepcopy(cfg.model)
    model.num_layers = layers
    torch.manual_seed(0)
    weights = EgoAgent(model).state_dict()
    return InitSource("runs/stage1", "a test", model, weights, weights), weights


def _layer(name: str) -> int | None:
    parts = name.split(".")
    return int(parts[parts.index("layers") + 1]) if "layers" in parts else None


@pytest.mark.parametrize("source_layers, target_layers", [(2, 1), (1, 2)])
def test_a_layer_count_mismatch_is_refused_with_one_line(tiny_cfg, source_layers,
                                                         target_layers):
    source, _ = _source(tiny_cfg, source_layers)
    tiny_cfg.model.num_layers = target_layers
    with pytest.raises(ConfigError) as err:
        check_model_config(tiny_cfg.model, source)
    message = str(err.value)
    assert "\n" not in message and f"trunk has {source_layers} layers" in message
    assert "--run.init_from_partial=true" in message
    check_model_config(tiny_cfg.model, source, partial=True)  # allowed when asked for
    torch.manual_seed(1)
    with pytest.raises(ConfigError, match="init_from_partial"):  # and at load time too
        load_shared(EgoAgent(tiny_cfg.model), source.student, source, "student")


@pytest.mark.parametrize("source_layers, target_layers", [(2, 1), (1, 2)])
def test_a_partial_load_takes_the_layers_both_have(tiny_cfg, caplog, source_layers,
                                                   target_layers):
    source, weights = _source(tiny_cfg, source_layers)
    tiny_cfg.model.num_layers = target_layers
    torch.manual_seed(1)
    module = EgoAgent(tiny_cfg.model)
    before = {k: v.clone() for k, v in module.state_dict().items() if torch.is_tensor(v)}
    with caplog.at_level(logging.WARNING):
        loaded = load_shared(module, source.student, source, "student", partial=True)
    assert "run.init_from_partial: student" in caplog.text
    both = min(source_layers, target_layers)
    assert {_layer(n) for n in loaded} - {None} == set(range(both))
    after = module.state_dict()
    for name, value in before.items():
        layer = _layer(name)
        if name in loaded:
            assert torch.equal(after[name], weights[name]), name
        elif layer is not None and layer >= both:
            assert torch.equal(after[name], value), name  # the extra layer starts afresh
