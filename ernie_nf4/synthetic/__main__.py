"""``python -m ernie_nf4.synthetic``: see ``ernie_nf4.synthetic.original``."""

from .original import main

main()
