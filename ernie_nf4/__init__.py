"""ernie-nf4: ERNIE-Image in 4-bit NF4 on an ordinary GPU.

The modules here are the vocabulary every part shares (errors, requests, progress, figures, formatting, machine
facts, variants, atomic writes, and ``compat``: every private upstream attribute used). Each concern is a
subpackage, whose ``__init__`` says what it owns and what it may import:

- ``package``: the package format and the checks every open runs;
- ``build``: building, carding and publishing packages (``python quantize.py``);
- ``prompt_enhancer``: the prompt enhancer's decoding loop and its kernels;
- ``runtime``: loading, memory modes, the fast transformer, generation;
- ``serving``: the service behind the app (lazy package, one load, several GPUs);
- ``webapp``: the Gradio app (``python app.py``);
- ``synthetic``: random-weight models for tests and benchmarks;
- ``benchmark``: ``python -m ernie_nf4.benchmark``.

Submodules import torch and the Hugging Face libraries lazily; importing this package is cheap.
"""

__version__ = "0.1.0"
