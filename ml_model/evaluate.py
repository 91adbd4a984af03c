"""`python -m ml_model.evaluate`: Evaluate a model bundle on a labelled folder.

The code is in `ml_model.evaluation.evaluate`; this module keeps the documented command."""

from ml_model.evaluation.evaluate import main

if __name__ == "__main__":
    main()
