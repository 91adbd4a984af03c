"""Evaluation: metrics, plots and the held-out / per-series reports."""
