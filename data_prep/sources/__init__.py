"""Pluggable sources of raw Python files. Each yields ``RawFile`` records for its share of work."""
