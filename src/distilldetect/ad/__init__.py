"""Adversarial (harmful-instance) detectors."""

from .model_distillation import ModelDistillation

__all__ = ["ModelDistillation"]
