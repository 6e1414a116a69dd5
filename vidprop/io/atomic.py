"""Atomic file output and completion markers.

Every file vidprop writes goes through :func:`atomic_write` or :func:`atomic_save`: the data
goes to a temporary file in the destination folder, is flushed and fsynced, then renamed over
the destination with :func:`os.replace` (atomic on POSIX and Windows within one filesystem).
On error the temporary file is removed and the destination is left as it was, so a reader
never sees a half-written file. Files get the mode ``open()`` would give them (0o666 minus the
umask), so shared result folders and caches are as readable as the user's umask says.

Temporary names (:func:`temp_path`) are unique per process and call and say who made them:
``.<stem>.<host tag>-<pid>-<random>.tmp<suffix>``. A run killed with SIGKILL cannot remove its
temporaries; :func:`remove_stale_temporaries` lets the next run remove them, and only them.

A folder of outputs (one video's masks, one video's features) is "complete" only once its
marker file :data:`COMPLETE_MARKER` exists; :func:`mark_complete` writes it last.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import socket
import time
from pathlib import Path
from typing import IO, Any, Callable, Collection, Iterator

__all__ = [
    "COMPLETE_MARKER",
    "atomic_write",
    "atomic_save",
    "mark_complete",
    "is_complete",
    "read_complete_info",
    "clear_complete",
    "temp_path",
    "remove_stale_temporaries",
    "STALE_TEMP_AGE_S",
    "HOST_TAG",
]

logger = logging.getLogger(__name__)

COMPLETE_MARKER = ".vidprop-complete"


# tag of this host in temporary names (a Ray actor reports it, so the driver can clean up after it)
HOST_TAG = hashlib.sha1(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:6]
_TEMP_NAME = re.compile(r"^\..*\.(?P<host>[0-9a-f]{6})-(?P<pid>[0-9]+)-[0-9a-f]{12}\.tmp(\.[^.]*)?$")

STALE_TEMP_AGE_S = 24 * 3600
"""A temporary not modified for this long is stale whoever made it (a live writer touches its
file at least once per frame; this covers runs on another host sharing the folder)."""


def temp_path(path: str | os.PathLike) -> Path:
    """A fresh, unused temporary path in ``path``'s folder that keeps ``path``'s suffix.

    The file is created empty with mode 0o666 minus the umask, as ``open()`` creates files, so
    the renamed result is readable by whoever the umask lets read it (``tempfile.mkstemp``
    would make every output 0o600). The name holds a tag of this host, this process's id and a
    random part: unique per process and call, and recognisable by :func:`remove_stale_temporaries`.
    The caller renames or removes it.
    """
    path = Path(path)
    for _ in range(100):
        name = path.parent / f".{path.stem}.{HOST_TAG}-{os.getpid()}-{secrets.token_hex(6)}.tmp{path.suffix}"
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return name
    raise FileExistsError(f"{path.parent}: no unused temporary file name found for {path.name}")


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (POSIX; elsewhere assume it does)."""
    if os.name != "posix":
        return True  # os.kill would terminate it on Windows: rely on the age rule there
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: another user's live process
        return True
    return True


def remove_stale_temporaries(
    folder: str | os.PathLike, now: float | None = None, dead: Collection[tuple[str, int]] = ()
) -> list[Path]:
    """Remove temporaries that runs killed before they could clean up left in ``folder``.

    Only files named by :func:`temp_path` are considered, and one is removed only when its
    process is known to be dead (same host, pid no longer running; or named in ``dead``) or it
    has not been modified for :data:`STALE_TEMP_AGE_S` seconds. Another live run's temporaries
    are never touched (a reused pid keeps a file until the age rule applies). Errors (a file
    removed meanwhile, a read-only folder) are ignored.

    Args:
        dead: ``(host tag, pid)`` of processes known to be dead on any host (a Ray actor that
            Ray reported dead); :data:`HOST_TAG` is this host's tag.

    Returns:
        The removed paths.
    """
    folder = Path(folder)
    now = time.time() if now is None else now
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP_NAME.match(entry.name)
        if match is None:
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            old = now - entry.stat(follow_symlinks=False).st_mtime > STALE_TEMP_AGE_S
            gone = (match["host"], int(match["pid"])) in dead
            gone = gone or (match["host"] == HOST_TAG and not _pid_alive(int(match["pid"])))
            if old or gone:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            continue
    if removed:
        logger.info("%s: removed %d temporary file(s) left by an interrupted run", folder, len(removed))
    return removed


def _fsync_dir(folder: Path) -> None:
    """Persist a rename in ``folder`` (best effort: not every platform can open a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", **open_kwargs: Any) -> Iterator[IO]:
    """Open a temporary file that replaces ``path`` when the ``with`` block ends without error.

    Args:
        path: destination file; its parent folder is created if missing.
        mode: ``"wb"`` or ``"w"`` (also ``"xb"``/``"x"``: fail if ``path`` exists).
        **open_kwargs: passed to :func:`open` (e.g. ``encoding="utf-8"``, ``newline=""``).

    Yields:
        The open temporary file object.

    Raises:
        ValueError: ``mode`` is not a write mode.
        FileExistsError: ``mode`` starts with ``x`` and ``path`` exists.
    """
    if mode not in ("w", "wb", "wt", "x", "xb", "xt"):
        raise ValueError(f"atomic_write: mode must be a write mode ('w', 'wb', 'x', 'xb'), got {mode!r}")
    path = Path(path)
    exclusive = mode.startswith("x")
    if exclusive and path.exists():
        raise FileExistsError(f"{path}: file exists")
    path.parent.mkdir(parents=True, exist_ok=True)
    if "b" not in mode and "encoding" not in open_kwargs:
        open_kwargs["encoding"] = "utf-8"
    tmp = temp_path(path)
    try:
        with open(tmp, "w" + mode[1:], **open_kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        _replace(tmp, path, exclusive)
    except BaseException:
        _remove_quietly(tmp)
        raise


def _replace(tmp: Path, path: Path, exclusive: bool) -> None:
    if exclusive:
        # os.link fails if the destination exists, which keeps "x" semantics race-free.
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise FileExistsError(f"{path}: file exists") from None
        except OSError:  # a filesystem without hard links: check, then rename
            if path.exists():
                raise FileExistsError(f"{path}: file exists") from None
            os.replace(tmp, path)
        else:
            tmp.unlink()
    else:
        os.replace(tmp, path)
    _fsync_dir(path.parent)


def atomic_save(path: str | os.PathLike, writer: Callable[[Path], None]) -> Path:
    """Let ``writer`` write to a temporary path, then rename it to ``path``.

    For libraries that want a file name rather than a file object (``PIL.Image.save``,
    ``torch.save``, ``np.save``). The temporary path is in the same folder and ends with the same
    suffix as ``path``, so format detection by extension works.

    Args:
        path: destination file; its parent folder is created if missing.
        writer: called once with the temporary path; must create that file.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        Whatever ``writer`` raises (the destination is then untouched and the temporary file
        removed); FileNotFoundError if ``writer`` returned without writing the file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        writer(tmp)
        if not tmp.is_file():
            raise FileNotFoundError(f"{path}: the writer did not create the temporary file {tmp}")
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        _replace(tmp, path, exclusive=False)
    except BaseException:
        _remove_quietly(tmp)
        raise
    return path


def mark_complete(folder: str | os.PathLike, info: dict | None = None) -> Path:
    """Write the completion marker of ``folder`` (atomically), optionally with JSON ``info``.

    Returns:
        The marker's path.
    """
    marker = Path(folder) / COMPLETE_MARKER
    with atomic_write(marker, "w") as fh:
        json.dump(info or {}, fh, indent=2, sort_keys=True, default=str)
        fh.write("\n")
    return marker


def is_complete(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` has its completion marker."""
    return (Path(folder) / COMPLETE_MARKER).is_file()


def read_complete_info(folder: str | os.PathLike) -> dict | None:
    """The ``info`` stored by :func:`mark_complete`, or None when the folder is not complete."""
    marker = Path(folder) / COMPLETE_MARKER
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        logger.warning("%s: unreadable completion marker (%s); treating the folder as incomplete", marker, exc)
        return None
    return data if isinstance(data, dict) else {}


def clear_complete(folder: str | os.PathLike) -> None:
    """Remove the completion marker of ``folder`` (no error if there is none)."""
    _remove_quietly(Path(folder) / COMPLETE_MARKER)
