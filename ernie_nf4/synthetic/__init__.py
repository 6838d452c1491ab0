"""Random-weight ERNIE-Image models built offline: tiny ones for tests and the app's ``--tiny``, full-size
ones for speed, memory and size figures.

- ``configs``: the real components' configs (``configs_data/``) and the tiny variant;
- ``tokenizers``: byte-level BPE tokenizers trained offline;
- ``original``: ``build_original``, a diffusers folder like the real one (``python -m ernie_nf4.synthetic``);
- ``tiny``: a tiny NF4 package built on the fly.

May import: the root modules, ``package``, ``build``.
"""
