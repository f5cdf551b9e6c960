"""Which broker a Celery app really talks to.

Celery reads ``CELERY_BROKER_URL`` from the environment before the app's ``broker_url``
setting, and its connections read ``broker_read_url`` / ``broker_write_url`` before either.
``cluster.configure_app`` puts celeriac's ``--broker`` in those two, so that a variable left
in the environment for the workers cannot override the flag; everything that names or keys
on the broker (the status page, the history file's name, the leader's lock, the scrubbing of
passwords from logs) reads it here, as the connections do.
"""

from __future__ import annotations

from celery import Celery


def broker_url(app: Celery) -> str:
    """The broker the app's connections use (the flag's, else the app's or the environment's)."""
    return str(app.conf.broker_read_url or "")
