"""Writing files so that a reader never sees half of one, and the one PNG encoder.

Every file step-ris writes (checkpoints, run and model folders, word-vector caches, ONNX
exports, masks and pictures) goes through ``atomic_write``, ``atomic_write_files`` or
``atomic_folder``:

1. the content goes to a temporary file in the target's own folder, named
   ``.<name>.<pid>-<random>.tmp`` (the same file system, so the rename is atomic);
2. it is flushed and ``fsync``-ed;
3. ``os.replace`` puts it in place (readers see the old file or the new one, never a mix);
4. on any failure (full disk, Ctrl-C) the temporary file is removed.

Files are created with the default mode (``0o666`` less the umask, usually ``0o644``),
folders with ``0o777`` less the umask: what ``open()`` and ``mkdir`` would make, not the
private ``0o600`` of ``tempfile.mkstemp`` (``atomic_folder`` also resets the files written
inside it by other libraries to these modes).

A process killed in the middle (SIGKILL, power loss) leaves its temporary file behind. The
next write into that folder removes such leftovers: entries matching the pattern above whose
writer is no longer running on this machine and that were last modified before the current
process started (so the live temporary files of a concurrent writer are never touched).
A model folder being replaced keeps its previous version as ``.<name>.<pid>-old<random>.tmp``
until the new one is in place; if the process dies in between, the cleanup puts the old
folder back.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

PROCESS_START = time.time()  # temporary files older than this (and whose writer is gone) are stale
TEMP_SUFFIX = ".tmp"
_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-(?P<old>old)?[A-Za-z0-9]{8}\.tmp$")
_cleaned: set[str] = set()  # folders already cleaned by this process

Content = bytes | bytearray | memoryview | str | Callable[[IO[bytes]], object]


def temp_name(path: str | os.PathLike, *, old: bool = False) -> Path:
    """A fresh temporary name beside ``path``: ``.<name>.<pid>-<random>.tmp``."""
    path = Path(path)
    tag = ("old" if old else "") + secrets.token_hex(4)
    return path.parent / f".{path.name}.{os.getpid()}-{tag}{TEMP_SUFFIX}"


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists, owned by someone else
    return True


def clean_stale_temps(folder: str | os.PathLike, *, before: float | None = None) -> list[Path]:
    """Remove the temporary files and folders that interrupted writes left in ``folder``.

    Only entries named like ``temp_name`` are considered, and only those whose writer process
    is not running and that were last modified before ``before`` (default: when this process
    started). A stale ``-old`` folder whose target is missing is renamed back to the target
    (the previous version of a model folder that a crash left aside). Returns what was removed
    or restored. Errors (a read-only folder) are logged, never raised.
    """
    folder = Path(folder)
    cutoff = PROCESS_START if before is None else before
    done: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return done
    for entry in entries:
        m = _TEMP_RE.match(entry.name)
        if not m or _pid_alive(int(m["pid"])):
            continue
        try:
            if entry.stat(follow_symlinks=False).st_mtime >= cutoff:
                continue
            path = Path(entry.path)
            target = folder / m["name"]
            if m["old"] and entry.is_dir(follow_symlinks=False) and not os.path.lexists(target):
                os.replace(path, target)
                log.warning("restored %s from %s (a replacement was interrupted)", target, path.name)
            elif entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path)
                log.info("removed %s, left by an interrupted write", path)
            else:
                path.unlink()
                log.info("removed %s, left by an interrupted write", path)
            done.append(path)
        except OSError as e:
            log.warning("could not remove the stale temporary file %s (%s)", entry.path, e.strerror or e)
    return done


def _clean_once(folder: Path) -> None:
    key = os.path.abspath(folder)
    if key not in _cleaned:
        _cleaned.add(key)
        clean_stale_temps(folder)


def _write_temp(path: Path, content: Content) -> Path:
    """Write ``content`` to a new temporary file beside ``path`` (fsync-ed); returns its name."""
    tmp = temp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(content):
                content(f)
            elif isinstance(content, str):
                f.write(content.encode("utf-8"))
            else:
                f.write(content)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _umask() -> int:
    current = os.umask(0o022)  # the only portable way to read it
    os.umask(current)
    return current


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (best effort; not every OS can open a folder)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: str | os.PathLike, content: Content, *, parents: bool = False) -> Path:
    """Write ``content`` to ``path`` atomically and return the path.

    content: bytes, a str (written as UTF-8), or a function that writes to the binary file it
        is given (e.g. ``lambda f: torch.save(obj, f)``).
    parents: create missing parent folders (else a missing folder is a ``FileNotFoundError``).
    """
    path = Path(path)
    if parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    _clean_once(path.parent)
    tmp = _write_temp(path, content)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_files(files: Mapping[str | os.PathLike, Content]) -> list[Path]:
    """Write several files so that, on an error, none of them changes.

    Every temporary file is complete before the first rename, so a failure while writing (a
    missing folder, a full disk, Ctrl-C) leaves every target as it was. (The renames
    themselves are not one transaction: a crash between two renames leaves the earlier ones.)
    """
    staged: list[tuple[Path, Path]] = []
    try:
        for path, content in files.items():
            path = Path(path)
            _clean_once(path.parent)
            staged.append((_write_temp(path, content), path))
        for tmp, path in staged:
            os.replace(tmp, path)
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise
    for folder in {path.parent for _, path in staged}:
        _fsync_dir(folder)
    return [path for _, path in staged]


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Build a folder in a temporary sibling and move it into place when the block succeeds.

        with atomic_folder("models/m", overwrite=True) as tmp:
            (tmp / "config.json").write_text(...)

    ``path`` is then either absent, its previous version, or complete. An existing non-empty
    ``path`` is replaced only with ``overwrite=True`` (else ``FileExistsError``). Files written
    inside need no atomicity of their own: nobody reads the temporary folder.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} exists and is not a folder")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise FileExistsError(f"{path} already exists and is not empty")
    path.parent.mkdir(parents=True, exist_ok=True)
    _clean_once(path.parent)
    tmp = temp_name(path)
    os.mkdir(tmp, 0o777)
    try:
        yield tmp
        umask = _umask()
        for entry in tmp.rglob("*"):  # whatever wrote them (safetensors makes 0o600 files): default modes
            if entry.is_dir():
                entry.chmod(0o777 & ~umask)
            elif entry.is_file():
                entry.chmod(0o666 & ~umask)
                with open(entry, "rb+") as f:
                    os.fsync(f.fileno())
        if path.exists():
            old = temp_name(path, old=True)
            os.replace(path, old)
            try:
                os.replace(tmp, path)
            except BaseException:
                os.replace(old, path)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ----------------------------------------------------------------------------- images

IMAGE_FORMATS = {".png": "PNG", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF", ".webp": "WEBP", ".jpg": "JPEG",
                 ".jpeg": "JPEG"}
LOSSY_SUFFIXES = (".jpg", ".jpeg")


def image_bytes(image, format: str = "PNG", **options) -> bytes:
    """Encode a PIL image or a uint8 array (``(H, W)`` or ``(H, W, 3|4)``) as ``format``.

    ``format`` is a Pillow format name ("PNG", "JPEG", ...) or a file suffix (".png"). WebP is
    written lossless unless ``options`` say otherwise.
    """
    from PIL import Image

    fmt = IMAGE_FORMATS.get(format.lower(), format.upper()) if format.startswith(".") else format.upper()
    if fmt == "WEBP":
        options.setdefault("lossless", True)
    if not isinstance(image, Image.Image):
        image = Image.fromarray(image)
    buf = io.BytesIO()
    image.save(buf, format=fmt, **options)
    return buf.getvalue()


def png_bytes(image, **options) -> bytes:
    """Encode a PIL image or a uint8 array as PNG (``options`` go to Pillow, e.g. ``compress_level``)."""
    return image_bytes(image, "PNG", **options)


__all__ = ["IMAGE_FORMATS", "LOSSY_SUFFIXES", "atomic_folder", "atomic_write", "atomic_write_files",
           "clean_stale_temps", "image_bytes", "png_bytes", "temp_name"]
