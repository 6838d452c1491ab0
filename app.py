"""ERNIE-Image NF4 web app: ``python app.py`` (``--tiny`` to try it without a GPU or download).

The app lives in ``ernie_nf4.webapp`` (``ui.build_demo(service)`` builds the UI around an ``ImageService``;
``cli.main()`` parses the flags and launches). Nothing is loaded, downloaded or put on a GPU at import.
"""

from ernie_nf4.webapp.cli import main
from ernie_nf4.webapp.ui import build_demo

__all__ = ["build_demo", "main"]

if __name__ == "__main__":
    main()
