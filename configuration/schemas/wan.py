"""The WAN request is a model now (configuration/requests/wan.py), its schema generated from it; its solver
names and frame bound are found here too."""
from configuration.requests.wan import SAMPLE_SOLVERS, limits, max_requested_frames

__all__ = ["SAMPLE_SOLVERS", "limits", "max_requested_frames"]
