"""Data selection: one interface (``Selector``), every method an implementation of it.

See :mod:`edgefilter.select.base` for the contract. Implementations:

* :func:`eif`: the paper's early instance filter (Eq. 1-7), quantile control.
* :func:`uniform`: a uniform random ``r_set`` of each chunk (the no-skill baseline).
* :func:`everything`: every instance (standard SGD, and EMP, through the same engine).
"""

from edgefilter.select.base import Choice, Selector, gather
from edgefilter.select.eif import EifState, eif
from edgefilter.select.everything import everything
from edgefilter.select.uniform import uniform

__all__ = ["Choice", "EifState", "Selector", "eif", "everything", "gather", "uniform"]
