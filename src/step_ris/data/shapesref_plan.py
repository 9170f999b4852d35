"""Deprecated alias of :mod:`step_ris.data.shapesref.plan` (ShapesRef became a package)."""

import sys
import warnings

from .shapesref import plan as _module

warnings.warn("step_ris.data.shapesref_plan is deprecated; import step_ris.data.shapesref.plan instead",
              DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _module
