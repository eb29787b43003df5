"""Clients of the servers that tasks reach out to: ICAP scanners (`icap`), and what the
EMAIL and NOTIFY tasks share (`context`: the settings and the stable keys of a notice)."""
