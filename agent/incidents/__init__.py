"""Incidents: their models, context from an alert, the report, the event stream and audit trail,
and the one storage module (`storage.py`) that holds every SQL statement UICI runs."""
