"""Pluggable sources of raw Python files. Each yields ``RawFile`` records for its share of work."""

from data_prep.sources.git import GitSource
from data_prep.sources.github import GitHubSource
from data_prep.sources.hf import HFSource
from data_prep.sources.local import LocalSource

SOURCES = {"local": LocalSource, "git": GitSource, "github": GitHubSource, "hf": HFSource}


def registry() -> dict:
    """Source types by the name used in a data config's ``sources: - type: NAME``."""
    return dict(SOURCES)
