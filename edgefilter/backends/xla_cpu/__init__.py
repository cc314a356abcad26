"""XLA:CPU lowerings: compile options, conv backward, folded sums, own buffers, layers."""
