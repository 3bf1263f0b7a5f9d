"""Experimental features, with no stability promise: names and behaviour may change in any
release (empty so far)."""

__all__: list[str] = []
