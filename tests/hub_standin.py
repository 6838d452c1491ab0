"""Kept for imports of the former download-only stand-in: it is now :class:`tests.hub_server.HubServer`."""

from .hub_server import COMMIT, HubServer

HubStandIn = HubServer

__all__ = ["COMMIT", "HubStandIn"]
