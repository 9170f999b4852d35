"""Deprecated alias of :mod:`step_ris.data.shapesref.logic` (ShapesRef became a package)."""

import sys
import warnings

from .shapesref import logic as _module

warnings.warn("step_ris.data.shapesref_logic is deprecated; import step_ris.data.shapesref.logic instead",
              DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _module
