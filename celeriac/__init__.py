"""celeriac: a monitor and control room for Celery clusters with Flower's REST API."""

__version__ = "0.1.0"
