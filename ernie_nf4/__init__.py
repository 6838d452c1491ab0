"""ernie-nf4: ERNIE-Image in 4-bit NF4 on an ordinary GPU.

Submodules import torch and the Hugging Face libraries lazily; importing this package is cheap.
"""

__version__ = "0.1.0"
