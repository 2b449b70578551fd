"""Backstory Generator: shared logic of the service, the gateway and training."""

__version__ = "0.1.0"
