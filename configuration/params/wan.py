"""The WAN request is a model now (configuration/requests/wan.py); its frame rounding is found here too."""
from configuration.requests.wan import normalise_frames

__all__ = ["normalise_frames"]
