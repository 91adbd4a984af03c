"""Inference: the one path from a decoded slice to a verdict (forward, CT gate, thresholds,
study aggregation, Grad-CAM), shared by the API, the CLI and evaluation."""
