"""Cervical-spine CT fracture triage: data, models, training, evaluation and export."""

__version__ = "0.1.0"
