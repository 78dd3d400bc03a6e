"""The generate stage."""

from bakeoff.generate.generate import generate

__all__ = ["generate"]
