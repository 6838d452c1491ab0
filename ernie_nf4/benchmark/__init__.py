"""``python -m ernie_nf4.benchmark``: stock diffusers against this project, stage by stage, on one card.

- ``run``: modes, timing, the command line.

May import: the root modules, ``package``, ``build``, ``runtime``, ``synthetic``.
"""
