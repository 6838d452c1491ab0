"""Fixtures come from ``tests/support``: ``fixtures`` (tiny originals, packages and generators; the ``cuda`` marker)
and ``app`` (a fake service, the real app on loopback, Chromium). Neither needs gradio to be imported."""

pytest_plugins = ["tests.support.fixtures", "tests.support.app"]
