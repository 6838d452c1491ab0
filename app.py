"""ERNIE-Image NF4 web app: ``python app.py`` (``--tiny`` to try it without a GPU or download).

The app lives in ``ernie_nf4.webapp`` (``ui.build_demo(service)`` builds the UI around an ``ImageService``;
``cli.main()`` parses the flags and launches). Nothing is loaded, downloaded or put on a GPU at import, and Gradio
is imported only once the settings are checked (it reads some of them, such as ``GRADIO_SERVER_PORT``, at import).
"""

from ernie_nf4.webapp.cli import main

__all__ = ["build_demo", "main"]  # noqa: F822 (build_demo: from __getattr__)


def __getattr__(name):
    if name == "build_demo":  # ``from app import build_demo``: the UI, with Gradio, on first use
        from ernie_nf4.webapp.ui import build_demo

        return build_demo
    raise AttributeError(f"module 'app' has no attribute {name!r}")


if __name__ == "__main__":
    main()
