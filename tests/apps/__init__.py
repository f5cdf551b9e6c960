"""Celery apps the tests run in real worker processes."""
