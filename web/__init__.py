"""Flask front end: API, dashboard and WebSocket relay. `create_app` is the factory."""

from web.app import create_app

__all__ = ["create_app"]
