"""busi runtime: decode, mask and classify breast ultrasound images with ONNX Runtime.

Never imports TensorFlow. Research software, not a medical device.
"""

from .contract import ModelInfo
from .errors import BusiError, DeviceError, InputError, ModelError
from .predictor import Failure, Prediction, Predictor, predict_breast_cancer

__all__ = [
    "BusiError", "DeviceError", "Failure", "InputError", "ModelError", "ModelInfo",
    "Prediction", "Predictor", "predict_breast_cancer",
]
