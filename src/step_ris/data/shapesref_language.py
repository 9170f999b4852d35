"""Deprecated alias of :mod:`step_ris.data.shapesref.language` (ShapesRef became a package)."""

import sys
import warnings

from .shapesref import language as _module

warnings.warn("step_ris.data.shapesref_language is deprecated; import step_ris.data.shapesref.language instead",
              DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _module
