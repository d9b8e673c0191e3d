"""placeholder"""
from trainpilot.analysis.findings import NATURAL
POLICY = dict(NATURAL)
