"""Shared test helpers: where the shared fixtures live, and a skip when they are absent."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared"
REFCOCO_MINI = SHARED / "fixtures" / "refcoco-mini"

try:  # the package is normally installed (pip install -e .); fall back to the src layout
    import step_ris  # noqa: F401
except ImportError:  # pragma: no cover - depends on the environment
    sys.path.insert(0, str(ROOT / "src"))


@pytest.fixture
def refcoco_mini() -> Path:
    """Root of the refcoco-mini fixture (REFER layout); skips the test when it is absent."""
    if not (REFCOCO_MINI / "refcoco" / "refs(unc).p").is_file():
        pytest.skip(f"refcoco-mini fixture not found at {REFCOCO_MINI}")
    return REFCOCO_MINI
