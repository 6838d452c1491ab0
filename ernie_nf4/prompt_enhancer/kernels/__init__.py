"""Triton kernels for the prompt enhancer's one-token steps, kept apart from the model code that calls them.

- ``nf4_gemv``: the Python side: which layers they support, launch shapes, references for the tests;
- ``triton_kernels``: the ``@triton.jit`` kernels (importing it imports Triton).

May import: the root modules.
"""
