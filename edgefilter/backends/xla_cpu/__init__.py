"""XLA:CPU lowerings, used when :mod:`edgefilter.backends`' switch is on.

Compile options (``compile``), Eq. 8 as GEMM + overlap-add (``conv_backward``), folded
per-channel sums (``channel_fold``), buffers of their own (``own_buffer``), the folded
batch norm, argmax pooling and tap-sum conv (``layers``), and the clear error for
forward-mode autodiff through them (``forward_mode``).
"""
