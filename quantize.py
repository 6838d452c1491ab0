"""Turn ERNIE-Image (a Hub id or a local diffusers folder) into an NF4 package: ``python quantize.py --help``.

The command lives in ``ernie_nf4.build.cli`` (also installed as ``ernie-nf4-quantize``).
"""

import sys

from ernie_nf4.build.cli import main

if __name__ == "__main__":
    sys.exit(main())
