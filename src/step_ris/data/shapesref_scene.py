"""Deprecated alias of :mod:`step_ris.data.shapesref.scene` (ShapesRef became a package)."""

import sys
import warnings

from .shapesref import scene as _module

warnings.warn("step_ris.data.shapesref_scene is deprecated; import step_ris.data.shapesref.scene instead",
              DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _module
