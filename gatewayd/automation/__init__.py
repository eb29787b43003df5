"""Automation: what makes client transfers without anyone asking (local folder watchers)."""
