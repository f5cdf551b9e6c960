"""Alerts: rules from a TOML file, evaluated on the live state, delivered to webhooks.

``rules`` reads and checks the file, ``conditions`` looks at the cluster, ``tracker`` turns what
it sees into one firing and one resolution per episode, ``notify`` delivers them, and
``engine`` runs the loop in the server's lifespan.
"""

from celeriac.alerts.engine import AlertEngine, disabled_snapshot
from celeriac.alerts.rules import AlertConfig, AlertConfigError, load_config

__all__ = ["AlertConfig", "AlertConfigError", "AlertEngine", "disabled_snapshot", "load_config"]
