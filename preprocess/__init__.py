"""Raw data (Ego-Exo4D, WalkingTours, the demo world) -> Megatron indexed datasets."""

import megatron_ego  # noqa: F401  (its start-up filters for expected warnings come first)
