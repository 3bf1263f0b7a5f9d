"""Tuning tools built on hyperparameters as data (learning-rate range test, batch-size advice,
hypergradients, population-based training): empty so far, filled by the tuning work."""

__all__: list[str] = []
