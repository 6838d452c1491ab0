"""``python -m ernie_nf4.synthetic``: see ``ernie_nf4.synthetic.build``."""

from .build import main

main()
