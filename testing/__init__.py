"""Helpers for tests and benchmarks (not part of the product): test DICOM writers."""
