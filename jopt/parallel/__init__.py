"""Sharding helpers (state shardings derived from the parameters', ZeRO-style placement):
empty so far. Every jopt transformation already runs under ``jit`` with sharded arrays,
``pmap`` and ``shard_map`` (``axis_name`` on its global reductions)."""

__all__: list[str] = []
