"""The merge engine: applies a plan to the resident VLM in place, one slot at a time, and restores it."""
