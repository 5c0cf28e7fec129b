"""The operators' dashboard: server-rendered pages over the JSON API and the live stream."""

from web.dashboard.views import bp

__all__ = ["bp"]
