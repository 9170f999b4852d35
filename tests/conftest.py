"""Shared test helpers: the REFER folders the data tests run on, and where the shared fixtures live.

Every REFER test runs on a folder generated here (``generated_refer``: see ``refer_fixture.py``), so
a plain clone runs them all; the real-photo ``refcoco-mini`` fixture of ``../shared`` is a second
parameter of ``refer_root`` and is skipped when absent. ``STEP_RIS_SHARED=/nonexistent`` hides it
(the plain-clone view); ``STEP_RIS_SHARED=DIR`` points at another copy.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("STEP_RIS_SHARED") or Path(__file__).resolve().parents[2] / "shared")
REFCOCO_MINI = SHARED / "fixtures" / "refcoco-mini"
REFER_FOLDERS = ("generated", "refcoco-mini")
"""The parameters of ``refer_root``: the generated folder, and the real photos when present."""

try:  # the package is normally installed (pip install -e .); fall back to the src layout
    import step_ris  # noqa: F401
except ImportError:  # pragma: no cover - depends on the environment
    sys.path.insert(0, str(ROOT / "src"))


def refcoco_mini_present() -> bool:
    return (REFCOCO_MINI / "refcoco" / "refs(unc).p").is_file()


@pytest.fixture
def refcoco_mini() -> Path:
    """Root of the refcoco-mini fixture (REFER layout); skips the test when it is absent."""
    if not refcoco_mini_present():
        pytest.skip(f"refcoco-mini fixture not found at {REFCOCO_MINI}")
    return REFCOCO_MINI


@pytest.fixture(scope="session")
def generated_refer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated refcoco folder (polygons, crowd RLE, 4 splits, 8 refs); tests must copy it to change it."""
    from refer_fixture import make_refer_folder

    return make_refer_folder(tmp_path_factory.mktemp("refer") / "data")


def refer_folder(kind: str, request: pytest.FixtureRequest) -> Path:
    """The root of one of :data:`REFER_FOLDERS` (skips for refcoco-mini when it is absent)."""
    if kind == "generated":
        return request.getfixturevalue("generated_refer")
    if not refcoco_mini_present():
        pytest.skip(f"refcoco-mini fixture not found at {REFCOCO_MINI} (the generated twin of this test runs)")
    return REFCOCO_MINI


@pytest.fixture(scope="session", params=REFER_FOLDERS)
def refer_root(request: pytest.FixtureRequest) -> Path:
    """A REFER root holding ``refcoco``: the generated folder, then the real refcoco-mini photos."""
    return refer_folder(request.param, request)
