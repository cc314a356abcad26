"""The paper's method: the early instance filter, error map pruning, k-bit training, MACs."""

from edgefilter.method import eif, emp, flops, instance_filter, quant

__all__ = ["eif", "emp", "flops", "instance_filter", "quant"]
