"""``minivmm compare``, the regression gate of ``minivmm timing --baseline``, and the fleet export.

- :mod:`minivmm.compare.documents`: reading ``timing --json`` documents back, one clear line per bad file.
- :mod:`minivmm.compare.stats`: the permutation test, bootstrap intervals, Cliff's delta (from the
  Mann-Whitney U), Holm's adjustment (standard library only).
- :mod:`minivmm.compare.ab`: the steps of two or more runs side by side and which changed significantly.
- :mod:`minivmm.compare.gate`: the gate's decision, a pure function of two documents.
- :mod:`minivmm.compare.openmetrics`: OpenMetrics text for node_exporter's textfile collector.
- :mod:`minivmm.compare.plot`: the changed steps' distributions overlaid (matplotlib).
"""
