"""step-ris: STEP (See-Through-Text Grouping, ICCV 2019) for referring image segmentation."""

from .config import ExperimentConfig, apply_overrides, get_preset, preset_names
from .model import STEPModel, STEPOutput, build_model
from .predictor import Prediction, Predictor
from .text import Vocabulary, tokenize

__version__ = "0.1.0"

__all__ = [
    "ExperimentConfig",
    "Prediction",
    "Predictor",
    "STEPModel",
    "STEPOutput",
    "Vocabulary",
    "apply_overrides",
    "build_model",
    "get_preset",
    "preset_names",
    "tokenize",
]
