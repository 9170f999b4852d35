"""The one atomic writer: no partial files, default file modes, stale temporary files cleaned."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from PIL import Image

from step_ris import fileio
from step_ris.engine.checkpoint import atomic_save, atomic_write_text
from step_ris.fileio import (
    atomic_folder,
    atomic_write,
    atomic_write_files,
    clean_stale_temps,
    image_bytes,
    png_bytes,
    temp_name,
)


def names(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def dead_pid() -> int:
    """The pid of a process that has exited."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def stale(folder, target: str, *, pid: int | None = None, age: float = 3600.0, folder_entry: bool = False):
    """A leftover temporary entry for ``target`` in ``folder``, last modified ``age`` seconds ago."""
    path = folder / f".{target}.{pid or dead_pid()}-{'ab12cd34'}.tmp"
    if folder_entry:
        path.mkdir()
        (path / "half.bin").write_bytes(b"x")
    else:
        path.write_bytes(b"half a file")
    old = time.time() - age
    os.utime(path, (old, old))
    return path


@pytest.fixture(autouse=True)
def fresh_cleanup_state(monkeypatch):
    monkeypatch.setattr(fileio, "_cleaned", set())  # each test starts as a new process would


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_write_content_kinds_and_default_mode(tmp_path):
    umask = os.umask(0o022)
    try:
        atomic_write(tmp_path / "a.bin", b"bytes")
        atomic_write(tmp_path / "b.txt", "texte ü")
        atomic_write(tmp_path / "sub" / "c.pt", lambda f: torch.save({"x": torch.ones(2)}, f), parents=True)
        atomic_save({"y": 1}, tmp_path / "run" / "last.pt")
        atomic_write_text(tmp_path / "run" / "config.json", "{}")
    finally:
        os.umask(umask)
    assert (tmp_path / "a.bin").read_bytes() == b"bytes"
    assert (tmp_path / "b.txt").read_text(encoding="utf-8") == "texte ü"
    assert torch.equal(torch.load(tmp_path / "sub" / "c.pt", weights_only=True)["x"], torch.ones(2))
    for f in ("a.bin", "b.txt", "sub/c.pt", "run/last.pt", "run/config.json"):
        assert mode(tmp_path / f) == 0o644, f  # not mkstemp's private 0o600
    assert names(tmp_path) == ["a.bin", "b.txt", "run", "sub"]  # no temporary file left


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "last.pt"
    target.write_bytes(b"old")

    def boom(f):
        f.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, boom)
    assert target.read_bytes() == b"old" and names(tmp_path) == ["last.pt"]
    with pytest.raises(FileNotFoundError):
        atomic_write(tmp_path / "missing" / "x", b"data")  # no parents=True


def test_several_files_all_or_nothing(tmp_path):
    good = tmp_path / "a.png"
    with pytest.raises(FileNotFoundError):
        atomic_write_files({good: b"first", tmp_path / "missing" / "b.png": b"second"})
    assert names(tmp_path) == []
    atomic_write_files({good: b"new", tmp_path / "c.png": b"c"})
    assert good.read_bytes() == b"new" and names(tmp_path) == ["a.png", "c.png"]


def test_stale_temporary_files_are_cleaned_by_the_next_write(tmp_path):
    leftovers = [stale(tmp_path, "last.pt"), stale(tmp_path, "mask.png"), stale(tmp_path, "m", folder_entry=True)]
    live = stale(tmp_path, "other.pt", pid=os.getpid())  # this process is writing it
    recent = stale(tmp_path, "new.pt", age=-60)  # modified after this process started
    foreign = tmp_path / ".notes.tmp"  # not our pattern
    foreign.write_text("keep me")
    atomic_write(tmp_path / "last.pt", b"checkpoint")
    assert not any(p.exists() for p in leftovers)
    assert live.exists() and recent.exists() and foreign.exists()
    assert (tmp_path / "last.pt").read_bytes() == b"checkpoint"


def test_a_model_folder_left_aside_by_a_crash_is_put_back(tmp_path):
    old = tmp_path / f".model.{dead_pid()}-oldab12cd34.tmp"
    old.mkdir()
    (old / "config.json").write_text("{}")
    t = time.time() - 3600
    os.utime(old, (t, t))
    assert clean_stale_temps(tmp_path) == [old]
    assert (tmp_path / "model" / "config.json").read_text() == "{}" and not old.exists()


def test_interrupted_process_leftover_is_removed_by_the_next_run(tmp_path):
    """A writer killed mid-write (SIGKILL) leaves its temporary file; the next process's write removes it."""
    target = tmp_path / "last.pt"
    kill = textwrap.dedent(f"""
        import os, signal
        from step_ris.fileio import atomic_write
        def half(f):
            f.write(b"half"); f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        atomic_write({str(target)!r}, half)
    """)
    proc = subprocess.run([sys.executable, "-c", kill], capture_output=True)
    assert proc.returncode == -9
    left = [n for n in names(tmp_path) if n.endswith(".tmp")]
    assert len(left) == 1 and left[0].startswith(".last.pt.")
    time.sleep(0.05)  # the next process starts after the leftover's last change
    again = f"from step_ris.fileio import atomic_write; atomic_write({str(target)!r}, b'whole')"
    subprocess.run([sys.executable, "-c", again], check=True)
    assert names(tmp_path) == ["last.pt"] and target.read_bytes() == b"whole"


def test_atomic_folder_replaces_whole_folders(tmp_path):
    out = tmp_path / "model"
    with atomic_folder(out) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".model.")
        (tmp / "a.txt").write_text("1")
    assert names(out) == ["a.txt"] and mode(out) == 0o777 & ~_umask()
    with pytest.raises(FileExistsError, match="not empty"):
        with atomic_folder(out):
            pass
    with pytest.raises(RuntimeError):
        with atomic_folder(out, overwrite=True) as tmp:
            (tmp / "b.txt").write_text("2")
            raise RuntimeError("fail half way")
    assert names(out) == ["a.txt"] and names(tmp_path) == ["model"]  # the old folder, no temporary
    with atomic_folder(out, overwrite=True) as tmp:
        (tmp / "b.txt").write_text("2")
    assert names(out) == ["b.txt"] and names(tmp_path) == ["model"]


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def test_temp_names_match_the_cleanup_pattern(tmp_path):
    for old in (False, True):
        name = temp_name(tmp_path / "x.png", old=old).name
        m = fileio._TEMP_RE.match(name)
        assert m and m["name"] == "x.png" and int(m["pid"]) == os.getpid() and bool(m["old"]) == old


def test_one_png_encoder():
    rgb = np.random.default_rng(0).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    data = png_bytes(rgb)
    assert data.startswith(b"\x89PNG") and np.array_equal(np.asarray(Image.open(io.BytesIO(data))), rgb)
    assert png_bytes(Image.fromarray(rgb)) == data
    assert image_bytes(rgb, ".jpg").startswith(b"\xff\xd8")
    webp = image_bytes(rgb, ".webp")
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(webp)).convert("RGB")), rgb)  # lossless
