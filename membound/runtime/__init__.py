"""Runtime: the static KV cache and the decode loop that drives compiled step graphs."""
