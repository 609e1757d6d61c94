"""Kernel → kernel transformations."""
from .default import default_schedule
