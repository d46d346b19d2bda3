"""Statistics of the models used by merges and views: Gram files (RegMean), role distances."""
