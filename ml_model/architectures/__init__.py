"""Model architectures: the seed CNN, keras.applications transfer models, EfficientNet-Lite,
the in-graph spine crop, and the registry that names them (``registry.REGISTRY``)."""
