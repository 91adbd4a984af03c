"""One module per resource: predict, health, model."""
