"""A merge plan: rules of components, per-layer α curves and methods, resolved per tensor."""
