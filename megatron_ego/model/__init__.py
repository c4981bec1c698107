"""The EgoAgent network: projectors, token layout, megatron-core trunk, heads."""
