"""Building, carding and publishing packages: what ``python quantize.py`` runs.

- ``source``: the original model (a Hub id or a local folder), resolved and checked;
- ``quantize``: ``quantize_package``, one component at a time, written atomically;
- ``model_card``: the package's ``README.md``, from its metadata alone;
- ``publish``: ``push_to_hub``;
- ``cli``: ``python quantize.py``'s flags.

May import: the root modules, ``package``.
"""
