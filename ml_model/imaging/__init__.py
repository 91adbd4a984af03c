"""Imaging: bytes -> greyscale slice -> model input (raster and DICOM decoding, HU windows)."""
