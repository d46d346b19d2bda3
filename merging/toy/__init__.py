"""The toy world: tiny, locally built model pairs (no downloads) for tests, benchmarks and the demo."""
