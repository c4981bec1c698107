"""Config loading: YAML + dotted overrides, strict keys and types, derived values."""

from __future__ import annotations

import pytest

from megatron_ego.config import ConfigError, load_config, save_config


def test_overrides_apply_and_types_convert():
    cfg = load_config("configs/tiny_cpu.yaml",
                      ["--model.num_layers=3", "--optim.lr=3e-4", "--data.global_crop_scale=[0.3, 1]"])
    assert cfg.model.num_layers == 3
    assert cfg.optim.lr == pytest.approx(3e-4)
    assert cfg.data.global_crop_scale == (0.3, 1.0)


def test_swiglu_width_follows_internlm_rounding():
    assert load_config("configs/egoagent_300m.yaml").model.ffn_hidden_size == 2816
    assert load_config("configs/egoagent_1b.yaml").model.ffn_hidden_size == 5632


@pytest.mark.parametrize("override, needle", [
    ("--model.num_layer=2", "model.num_layer"),
    ("--modle.num_layers=2", "modle"),
    ("--optim.lr=fast", "optim.lr"),
    ("--run.precision=fp8", "['bf16', 'fp16', 'fp32']"),
    ("--model.recompute=3", "model.recompute"),
    ("--model.image_size=100", "multiple of model.patch_size=16"),
    ("--data.walking_tours_ratio=2", "data.walking_tours_ratio"),
])
def test_bad_keys_and_values_name_the_key(override, needle):
    with pytest.raises(ConfigError, match=None) as e:
        load_config("configs/tiny_cpu.yaml", [override])
    assert needle in str(e.value)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "nope.yaml"))


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config("configs/egoagent_1b.yaml", ["--loss.act_weight=0.5"])
    save_config(cfg, str(tmp_path / "resolved.yaml"))
    again = load_config(str(tmp_path / "resolved.yaml"))
    assert again == cfg


@pytest.mark.parametrize("name, weight", [
    ("baseline", None), ("no_represent", "represent_weight"), ("no_predict", "predict_weight"),
    ("no_act", "act_weight"),
])
def test_ablation_configs_zero_exactly_one_weight(name, weight):
    cfg = load_config(f"configs/ablations/{name}.yaml")
    weights = {w: getattr(cfg.loss, w) for w in ("represent_weight", "predict_weight", "act_weight")}
    if weight is not None:
        assert weights.pop(weight) == 0.0
    assert all(v == 1.0 for v in weights.values())
    assert cfg.model.hidden_size == 1024 and cfg.model.num_layers == 22
    assert cfg.schedule.train_iters == 14400  # paper Sec. 4.6: the short schedule


def test_walking_tours_without_the_represent_loss_is_refused():
    with pytest.raises(ConfigError, match="walking_tours_ratio=0.5 with loss.represent_weight=0"):
        load_config("configs/egoagent_300m.yaml", ["--loss.represent_weight=0"])
