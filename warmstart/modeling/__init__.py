"""The classifier, its training loop, distribution strategies, graph surgery and caches."""
