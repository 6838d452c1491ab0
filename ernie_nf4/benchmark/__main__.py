"""``python -m ernie_nf4.benchmark``: see ``ernie_nf4.benchmark.run``."""

import sys

from .run import main

sys.exit(main())
