"""Celery app and tasks: thin wrappers that take ids and call the domain in `orchestrator/`."""
