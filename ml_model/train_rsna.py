"""`python -m ml_model.train_rsna`: Train the RSNA 2022 study model and export a study bundle.

The code is in `ml_model.training.train_rsna`; this module keeps the documented command."""

from ml_model.training.train_rsna import main

if __name__ == "__main__":
    main()
