"""``python -m ernie_nf4.benchmark``: stock diffusers against this project, stage by stage, on one card.

- ``run``: modes, timing, the command line;
- ``fidelity``: NF4 against bf16 and the fast path against the stock forward, through the generator's stages.

May import: the root modules, ``package``, ``build``, ``runtime``, ``synthetic``.
"""
