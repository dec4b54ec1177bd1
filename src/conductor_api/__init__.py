"""Conductor API: the authentication backend of the Conductor Android app."""

__version__ = "0.1.0"
