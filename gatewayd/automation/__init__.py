"""Automation: work the gateway starts on its own (folder watchers, remote pollers and
schedules), each file sent or fetched exactly once."""
