"""busi runtime: decode, mask and classify breast ultrasound images with ONNX Runtime.

Never imports TensorFlow. Research software, not a medical device.
"""

from .card import ModelCard
from .contract import ModelInfo, SegmenterInfo
from .errors import BusiError, DeviceError, InputError, ModelError
from .model_dir import ModelDir
from .options import PredictorOptions
from .predictor import Predictor, predict_breast_cancer
from .results import Failure, NeedsRoi, Prediction

__all__ = [
    "BusiError", "DeviceError", "Failure", "InputError", "ModelCard", "ModelDir", "ModelError", "ModelInfo", "SegmenterInfo",
    "NeedsRoi", "Prediction", "Predictor", "PredictorOptions", "predict_breast_cancer",
]
