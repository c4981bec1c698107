"""megatron-ego: EgoAgent (represent, predict, act) on megatron-core and DeepSpeed."""

__version__ = "0.1.0"
