"""Evaluating a model: the one evaluation loop that the trainer and every analysis share, and a
trained model under shift (calibration, corruptions, attacks, out-of-distribution detection)."""

from .loop import error_counts, predictions

__all__ = ["error_counts", "predictions"]
