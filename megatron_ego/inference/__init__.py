"""Inference on an exported EgoAgent: ``EgoAgent.from_pretrained(folder)`` and its three
abilities, represent, predict and act (``agent``; the contract of inputs, outputs, feature spaces
and which weights run is documented there). Inputs are checked and converted in ``inputs``, the
export's tensors checked against the module in ``weights``.

    from megatron_ego.inference import EgoAgent
    agent = EgoAgent.from_pretrained("runs/egoagent_300m/export", device="cuda")
"""

from megatron_ego.inference.agent import EgoAgent

__all__ = ["EgoAgent"]
