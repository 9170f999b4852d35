"""The STEP network (Chen et al., ICCV 2019), one module per paper component."""

from .build import build_model, count_parameters
from .step import STEPModel, STEPOutput

__all__ = ["STEPModel", "STEPOutput", "build_model", "count_parameters"]
