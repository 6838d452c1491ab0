"""``python -m tests.support.compile_ahead_cpu``: ``python -m ernie_nf4.runtime.compile_ahead`` with diffusers'
GPU-only check lifted in its own process when there is no GPU, as the ``nf4_everywhere`` fixture lifts it in the
tests' process, so that the helper loads an NF4 transformer on the CPU. With a GPU nothing is patched."""

import os
import sys
from unittest import mock

import torch

from ernie_nf4.compat import diffusers_bnb_guard
from ernie_nf4.runtime import compile_ahead

if __name__ == "__main__":
    if torch.cuda.is_available():
        compile_ahead.main()
    else:
        with mock.patch.object(diffusers_bnb_guard(), "validate_environment", lambda self, *a, **k: None):
            compile_ahead.main()
    sys.stdout.flush()
    os._exit(0)
