"""Alerting: stored facts in, classified alerts with a lifecycle out, one module per concern.

The stages follow Alertmanager's split (dispatch, inhibit/silence, group, notify) and
Home Assistant's one-module-per-concern integrations; data flows one way, top to bottom:

- `facts`: the SQL of what alerting reads (the followed tables, cursors, evidence);
- `feed`: following those tables by id from saved cursors, without skipping a row that
  commits out of order (`Tail`), settlement outcomes first; each row also feeds the metrics;
- `settlements`: a settlement outcome's alert, its cause classified (`collector.classify`);
- `terminals`, `batches`, `transactions`: the terminals' liveness and links, their
  batches, decline spikes and conflicting claims;
- `group`: bank outages, failures clustered by when they happened (`densest_window`);
- `mute`: silences and maintenance windows;
- `lifecycle`: firing once per fingerprint and resolving once, muted or not, queued;
- `cases`: what alerts and settlements do to re-remittance cases;
- `engine`: `AlertEngine`, which only dispatches rows and sweeps to the parts above;
- `store`: the SQL of alerts, their history, silences and the notification queue;
- `rows`: the typed rows these parts hand one another.

The detectors and fingerprints stay in `collector.rules` and the cause classification in
`collector.classify`: pure, they take values and return values, and are tested as such.
`collector.notify` delivers what `store` queued. The names below are the package's
public face (the collector, its commands and API, the simulators).
"""

from collector.alerts.engine import AlertEngine
from collector.alerts.rows import Queued, StoredAlert, alert_event
from collector.alerts.store import AlertError, AlertStore, new_alert_id

__all__ = [
    "AlertEngine",
    "AlertError",
    "AlertStore",
    "Queued",
    "StoredAlert",
    "alert_event",
    "new_alert_id",
]
