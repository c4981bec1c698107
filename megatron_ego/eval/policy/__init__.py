"""The policy-learning evaluation on TriFinger (the paper's appendix, Table 5).

Following Majumdar et al.'s TriFinger benchmark (CortexBench, facebookresearch/eai-vc): frozen
representations, a 3-layer MLP trained by behaviour cloning on 100 demonstrations per task,
success measured in the simulator (``trifinger-simulation``). Modules, bottom up:

- ``sim``: the simulator behind one class (scene, camera60, impedance control), its import;
- ``measure``: the benchmark's scaled success, the success rate and its Wilson interval;
- ``tasks``: reach cube and move cube (initial states per seed, episodes);
- ``expert``: the scripted experts that make the demonstrations;
- ``demos``: the demonstration files (indexed datasets + manifest) and their reader;
- ``bc``: the MLP policy and behaviour cloning;
- ``encoders``: the frozen representations and their cached features;
- ``run``: the task as ``launch/evaluate.py --task policy`` runs it.
"""
