"""Writing a plan out: the merged checkpoint, and the equivalent mergekit configuration."""
