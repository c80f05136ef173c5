"""Evaluating a model: the one evaluation loop that the trainer and every analysis share."""

from .loop import error_counts, predictions

__all__ = ["error_counts", "predictions"]
