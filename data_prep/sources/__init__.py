"""Pluggable sources of raw Python files. Each yields ``RawFile`` records for its share of work."""


def registry() -> dict:
    """Source types by the name used in a data config's ``sources: - type: NAME``."""
    from data_prep.sources.local import LocalSource

    kinds = {"local": LocalSource}
    try:
        from data_prep.sources.git import GitSource

        kinds["git"] = GitSource
    except ImportError:
        pass
    try:
        from data_prep.sources.github import GitHubSource

        kinds["github"] = GitHubSource
    except ImportError:
        pass
    try:
        from data_prep.sources.hf import HFSource

        kinds["hf"] = HFSource
    except ImportError:
        pass
    return kinds
