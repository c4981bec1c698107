"""megatron-ego: EgoAgent (represent, predict, act) on megatron-core and DeepSpeed."""

__version__ = "0.1.0"

import logging as _logging
import warnings as _warnings

# megatron-core warns at import time, once per module, that apex / Transformer Engine are absent
# (always true on CPU machines); the fallbacks it announces are the ones this project expects.
_warnings.filterwarnings("ignore", message=r".*(Apex|Transformer Engine and Apex) (is|are) not installed")
_warnings.filterwarnings("ignore", message=r"full scope is deprecated")
# DeepSpeed's ZeRO-2 calls torch.distributed.all_gather_into_tensor, which torch 2.14 marks
# deprecated: one FutureWarning per rank that only a DeepSpeed release can fix.
_warnings.filterwarnings("ignore", message=r"`torch.distributed.all_gather_into_tensor` is deprecated",
                         category=FutureWarning)

# torch logs "No CUDA runtime is found, using CUDA_HOME=..." when megatron-core or DeepSpeed
# import torch.utils.cpp_extension on a machine without CUDA: true, expected, and nothing a user
# can act on. Errors from that module still show.
_logging.getLogger("torch.utils.cpp_extension").setLevel(_logging.ERROR)
