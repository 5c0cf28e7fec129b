"""Marshmallow schemas of the API: what a request may carry."""
