"""step-ris: STEP (See-Through-Text Grouping, ICCV 2019) for referring image segmentation.

    from step_ris import Predictor
    predictor = Predictor.from_pretrained()          # the bundled shapes-cpu model
    encoded = predictor.encode("photo.jpg")          # the image-only work, once
    predictor.predict(encoded, "the red circle").mask

Importing this needs only the core dependencies (torch, torchvision, numpy, Pillow,
safetensors, tqdm); the optional parts import their extras when used (``step_ris._extras``).
"""

from .config import ExperimentConfig, apply_overrides, get_preset, preset_names
from .model import STEPModel, STEPOutput, build_model
from .predictor import EncodedImage, Prediction, Predictor
from .pretrained import load_pretrained, push_to_hub, save_pretrained
from .text import Vocabulary, tokenize

__version__ = "0.1.0"

__all__ = [
    "EncodedImage",
    "ExperimentConfig",
    "Prediction",
    "Predictor",
    "STEPModel",
    "STEPOutput",
    "Vocabulary",
    "apply_overrides",
    "build_model",
    "get_preset",
    "load_pretrained",
    "preset_names",
    "push_to_hub",
    "save_pretrained",
    "tokenize",
]
