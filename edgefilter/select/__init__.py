"""Data selection: one interface (``Selector``), every method an implementation of it.

See :mod:`edgefilter.select.base` for the contract. Implementations:

* :func:`eif`: the paper's early instance filter (Eq. 1-7), quantile control.
* :func:`with_loss_history`: EIF ranked together with each instance's last recorded
  main-network loss (issue 19; not in the paper).
* :func:`uniform`: a uniform random ``r_set`` of each chunk (the no-skill baseline).
* :func:`everything`: every instance (standard SGD, and EMP, through the same engine).
* :func:`oracle`, :func:`ohem`: the highest-loss ``r_set`` of each chunk by the main
  network's own forward (inference / training mode), baselines of issue #18.
* :func:`selective_backprop`: Jiang et al. 2019, keep with probability CDF(loss)^beta,
  packed into full batches (and its stale variant).
* :func:`infobatch`: Qin et al. 2024, random pruning of the below-mean-loss instances,
  the kept ones' loss rescaled, packed into full batches.
"""

from edgefilter.select.base import Choice, Packed, Selector, gather
from edgefilter.select.eif import EifState, eif
from edgefilter.select.everything import everything
from edgefilter.select.infobatch import InfoBatchState, infobatch
from edgefilter.select.loss_history import LossHistoryState, with_loss_history
from edgefilter.select.selective_backprop import SbState, selective_backprop
from edgefilter.select.top_loss import TopLossState, ohem, oracle
from edgefilter.select.uniform import uniform

__all__ = [
    "Choice",
    "EifState",
    "InfoBatchState",
    "LossHistoryState",
    "Packed",
    "SbState",
    "Selector",
    "TopLossState",
    "eif",
    "everything",
    "gather",
    "infobatch",
    "ohem",
    "oracle",
    "selective_backprop",
    "uniform",
    "with_loss_history",
]
