"""The store of evaluated configurations (diskcache + JSONDisk). Knows nothing of torch or models."""

from .store import AnswerCache, config_key

__all__ = ["AnswerCache", "config_key"]
