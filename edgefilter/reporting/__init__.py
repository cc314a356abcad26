"""Reporting: runs read back, compared, summarised over seeds and drawn.

* ``comparison``: several variants on one stream, one seed, tabulated against SGD;
* ``runs``: a finished run's summary.json and metrics.jsonl, read back;
* ``results``: means and 95% Student-t intervals over seeds, results.md/results.json;
* ``figures``: accuracy against computation and against time, the kept fraction;
* ``harness``: methods x budgets x seeds on the same stream (``experiments.baselines``).
"""

from edgefilter.reporting import comparison, figures, harness, results, runs

__all__ = ["comparison", "figures", "harness", "results", "runs"]
