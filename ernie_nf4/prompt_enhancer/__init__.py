"""The prompt enhancer's own decoding loop and the GPU kernels it runs on.

- ``decoding``: ``PEDecoder``: prefill, decode one token, decode n tokens, with a static KV cache and a CUDA graph;
- ``watch``: ``TokenWatch``, what the decoding loops do every few tokens: heed the run's stop signal, report progress;
- ``kernels/``: Triton kernels that read bitsandbytes' packed NF4 weights as they are, and their Python wrappers.

May import: the root modules.
"""
