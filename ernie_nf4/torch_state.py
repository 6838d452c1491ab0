"""One lock for the work that changes torch's process-wide state for a while and then puts it back.

Building a model, diffusers and transformers set the default dtype to the model's (bfloat16) and back; converting
a function, TorchDynamo (``torch.compile``, ``torch.export``) saves that state as it starts and sets it again as it
ends. A compile in one thread that overlaps a load in another can so put back what the load had set only for a
moment, and the whole process keeps it: bfloat16 as the default dtype, so every tensor made after that without a
dtype, bitsandbytes' NF4 tables among them, is bfloat16. Loads and compiles run inside ``torch_state_kept()``: each
waits for the other, and the default dtype is the same after as before, also when the work raised (diffusers does
not put it back when building a model fails).
"""

from __future__ import annotations

import contextlib
import threading

_LOCK = threading.RLock()


@contextlib.contextmanager
def torch_state_kept():
    """Hold the lock and leave torch's default dtype as it was found, however the work inside ends."""
    import torch

    with _LOCK:
        dtype = torch.get_default_dtype()
        try:
            yield
        finally:
            torch.set_default_dtype(dtype)
