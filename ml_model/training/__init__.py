"""Training: the training run (leave-one-series-out inside), architecture comparison, the
CT gate's fitting, and export of the bundle."""
