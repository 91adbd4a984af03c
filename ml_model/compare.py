"""`python -m ml_model.compare`: Compare architectures, leave-one-series-out.

The code is in `ml_model.training.compare`; this module keeps the documented command."""

from ml_model.training.compare import main

if __name__ == "__main__":
    main()
