"""retrieval_lab: a config-driven lab for dense text retrieval research."""

__version__ = "0.1.0"
