"""JSON API blueprints, registered in one place."""

from __future__ import annotations

from flask import Flask


def register_api(app: Flask) -> None:
    from web.api import admin, agents, decompose, events, executions, health, imports, me, ops, plans, users, work

    for module in (health, agents, plans, executions, work, events, decompose, imports, admin, users, me, ops):
        app.register_blueprint(module.bp)
