"""``python -m tests.support.compile_ahead_cpu``: ``python -m ernie_nf4.runtime.compile_ahead`` with diffusers'
GPU-only check lifted in its own process, as the ``nf4_everywhere`` fixture lifts it in the tests' process, so that
the helper loads an NF4 transformer on the CPU. With a GPU nothing is patched (tests run the real command there)."""

from unittest import mock

from diffusers.quantizers.bitsandbytes.bnb_quantizer import BnB4BitDiffusersQuantizer

from ernie_nf4.runtime import compile_ahead

if __name__ == "__main__":
    with mock.patch.object(BnB4BitDiffusersQuantizer, "validate_environment", lambda self, *a, **k: None):
        compile_ahead.main()
