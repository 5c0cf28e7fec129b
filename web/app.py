"""The Flask app factory: one Settings object binds the database, Redis and Celery."""

from __future__ import annotations

import logging

import redis
from celery import Celery
from flask import Flask

from orchestrator.db import Database
from orchestrator.embedded_redis import resolved_redis_url
from orchestrator.encryption_keys import check_keys
from orchestrator.events.accept import Ingestor
from orchestrator.log_masking import install_log_masking
from orchestrator.settings import Settings
from web.api import register_api
from web.auth import init_auth
from web.dashboard import bp as dashboard_bp
from web.errors import register_error_handlers
from web.json_body import BodyJSONProvider
from web.live import bp as live_bp
from web.live import sock
from web.metrics import init_metrics
from web.openapi import init_openapi
from web.rate_limits import init_rate_limits
from web.routing import IdConverter
from workers.celery_app import celery_config, create_celery, drain_trigger


def celery_init_app(app: Flask) -> Celery:
    """The Flask docs' pattern: Celery built from app.config["CELERY"], made default, kept in extensions."""
    celery_app = create_celery(app.config["SETTINGS"], app.name, config=app.config["CELERY"])
    celery_app.set_default()
    app.extensions["celery"] = celery_app
    return celery_app



def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or Settings.from_env()
    settings = settings.replace(redis_url=resolved_redis_url(settings.redis_url, settings.data_dir))
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    install_log_masking()  # gunicorn's handlers too: they exist before its workers load the app

    app = Flask(__name__)
    app.url_map.converters["default"] = IdConverter  # before any route: every URL variable is an id
    app.config.from_mapping(
        SECRET_KEY=settings.secret_key,
        SETTINGS=settings,
        CELERY=celery_config(settings),
        MAX_CONTENT_LENGTH=settings.max_body_bytes,  # larger bodies are answered 413
    )
    app.json = BodyJSONProvider(app)  # bodies parsed by orjson and checked; answers keep their field order
    app.extensions["db"] = Database(settings)
    check_keys(app.extensions["db"])  # keys that cannot read the stored data stop the start here
    app.extensions["redis"] = redis.Redis.from_url(settings.redis_url, health_check_interval=30)
    celery_app = celery_init_app(app)
    app.extensions["ingestor"] = Ingestor(
        redis=app.extensions["redis"], prefix=settings.redis_key_prefix, shards=settings.ingest_shards,
        trigger=drain_trigger(celery_app), db=app.extensions["db"],
    )

    register_error_handlers(app)
    init_auth(app)
    init_rate_limits(app, settings)
    init_metrics(app)  # before the blueprints: every request is counted by its route
    register_api(app)
    app.register_blueprint(live_bp)
    app.register_blueprint(dashboard_bp)
    sock.init_app(app)
    init_openapi(app)  # /api/openapi.json and /api/docs
    return app
