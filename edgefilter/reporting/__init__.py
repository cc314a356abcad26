"""Reporting: runs read back, compared, summarised over seeds and drawn.

* ``comparison``: several variants on one stream, one seed, tabulated against SGD;
* ``runs``: a finished run's summary.json and metrics.jsonl, read back;
* ``results``: means and 95% Student-t intervals over seeds, results.md/results.json;
* ``figures``: accuracy against computation (Fig. 6/8) and against time, the kept fraction;
* ``filter_figures``: the filter's threshold (Fig. 10), wrong predictions (Fig. 11) and
  kept and dropped instances (Fig. 13);
* ``emp_figures``: EMP's kept channels per conv layer (Fig. 14);
* ``harness``: methods x budgets x seeds on the same stream (``experiments.baselines``);
* ``report``: report.md with the table and the figures of any set of runs
  (``experiments.report``).
"""

from edgefilter.reporting import (
    comparison,
    emp_figures,
    figures,
    filter_figures,
    harness,
    report,
    results,
    runs,
)

__all__ = [
    "comparison",
    "emp_figures",
    "figures",
    "filter_figures",
    "harness",
    "report",
    "results",
    "runs",
]
