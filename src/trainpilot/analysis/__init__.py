"""Analysis: detectors of training problems over a run's metrics, fed live by the server or offline.

>>> RunAnalysis().observe(0, {"loss": float("nan")})[0].kind
'nan_inf'
"""

from trainpilot.analysis.engine import Analyzer, RunAnalysis, analyze_events
from trainpilot.analysis.findings import Finding, Thresholds

__all__ = ["Analyzer", "Finding", "RunAnalysis", "Thresholds", "analyze_events"]
