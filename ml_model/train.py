"""`python -m ml_model.train`: Train a model bundle.

The code is in `ml_model.training.train`; this module keeps the documented command."""

from ml_model.training.train import main

if __name__ == "__main__":
    main()
