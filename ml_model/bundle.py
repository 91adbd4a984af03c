"""What a model bundle folder holds, by name (written by training, read by inference).

A bundle: ``model.keras`` (Keras), ``saved_model/`` (TF Serving), ``model.tflite``,
``model.onnx`` and ``gradcam.onnx`` (ONNX Runtime, the serving default), ``gate.npz`` (the
CT gate) and ``model_card.json`` (``ml_model.card.ModelCard``). A study bundle adds
``study_head.npz`` and a ``slice_features`` output of the serving graph.
"""

KERAS_FILE = "model.keras"
SAVED_MODEL_DIR = "saved_model"
TFLITE_FILE = "model.tflite"
CARD_FILE = "model_card.json"
GATE_FILE = "gate.npz"
# Optional: the "CT in any window" gate (issue 26), asked only about what gate.npz refuses.
ANY_WINDOW_GATE_FILE = "ct_any_window.npz"
# A study bundle (RSNA 2022): the study head's weights (``ml_model.inference.study_head``),
# which turns the ordered slices' features into patient_overall and C1..C7 probabilities.
STUDY_HEAD_FILE = "study_head.npz"

# The serving signature, as TF Serving's REST `predict` sees it: uint8 pixels in, the
# calibrated P(fracture) and the CT gate's logit out (a CT slice when >= gate.threshold).
SERVING_SIGNATURE = "serving_default"
SERVING_INPUT = "image"
SERVING_OUTPUT = "probability"
SERVING_GATE_OUTPUT = "ct_logit"
# A study bundle's graph also returns each slice's features (N, F) for the study head.
SERVING_FEATURES_OUTPUT = "slice_features"
# The output of a several-output (study bundle) slice model that is P(fracture) of the slice.
FRACTURE_OUTPUT = "fracture"

# ONNX Runtime (the serving default): ``model.onnx`` has the serving signature's input and
# outputs; ``gradcam.onnx`` (one image at a time) maps Grad-CAM and the spine crop's box. Its
# weights are byte ranges of model.onnx (ONNX external data), so the two ship once.
ONNX_FILE = "model.onnx"
GRADCAM_ONNX_FILE = "gradcam.onnx"
GRADCAM_OUTPUT = "gradcam"
GRADCAM_BOX_OUTPUT = "crop_box"
# gradcam.onnx's metadata: "<file> sha256:<hex>" of the file whose bytes it borrows.
SHARED_WEIGHTS_KEY = "shares_weights_of"
# model.onnx's metadata: JSON {file: "sha256:<hex>", "temperature": T} of the bundle files
# and calibration it was exported from; a bundle retrained or refitted since is refused.
EXPORTED_FROM_KEY = "exported_from"
