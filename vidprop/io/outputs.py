"""Where outputs may go, and whether finished outputs still match their inputs.

- :func:`check_output_locations`: an output folder must not be an input, lie inside one, or
  contain one (writing masks named like the frames into the frames folder overwrites them).
  Paths are compared after resolving symlinks, and existing folders also by identity
  (device and inode), so a symlink, a bind mount or ``..`` cannot hide an overlap.
- :func:`prepare_output_folder`: create an output folder and prove it writable by writing a
  probe file, which is what really fails (``os.access`` says yes to root on any folder and
  no to users whose ACLs allow writing); an existing file, a file where a folder is needed or a
  read-only folder is an :class:`~vidprop.errors.InputError` naming the path.
- :func:`input_identity` / :func:`changed_inputs`: what a completion marker records about the
  inputs, and which of them changed since: the source's identity (frame names and file sizes
  of a folder; size and modification time of a video file) and the content of the mask files
  (SHA-256), so editing a mask in place or giving another one redoes the video.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path
from typing import Iterable, Mapping

from vidprop.errors import InputError

__all__ = [
    "check_output_locations",
    "prepare_output_folder",
    "input_identity",
    "changed_inputs",
    "source_identity",
    "masks_digest",
]


class _Place:
    """A path resolved once: its symlink-free absolute form and the (device, inode) of it and of
    each existing ancestor, so that overlaps are found through symlinks and bind mounts alike."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path).expanduser().resolve()
        self.key = _inode(self.path)
        self.chain = {k for k in map(_inode, (self.path, *self.path.parents)) if k is not None}

    def within(self, outer: "_Place") -> bool:
        """Whether this path is ``outer`` or lies inside it."""
        if self.path == outer.path or self.path.is_relative_to(outer.path):
            return True
        return outer.key is not None and outer.key in self.chain


def _inode(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def check_output_locations(
    outputs: Iterable[tuple[str, str | os.PathLike | None]],
    inputs: Iterable[tuple[str, str | os.PathLike | None]],
) -> None:
    """Refuse an output folder that is, is inside, or contains one of the inputs.

    Args:
        outputs: ``(description, path)`` of the folders that will be written ("output folder",
            "feature cache"); they need not exist yet. None paths are ignored.
        inputs: ``(description, path)`` of the inputs (frames folder, video file, mask file or
            folder, DAVIS root, ...). None paths and paths that do not exist are ignored (there
            is nothing to overwrite; opening them fails later with its own message).

    Raises:
        InputError: naming the output, the input and how they overlap.
    """
    places = [(label, path, _Place(path)) for label, path in inputs if path is not None and os.path.lexists(path)]
    for what, output in outputs:
        if output is None:
            continue
        out = _Place(output)
        for label, given, inp in places:
            inside, contains = out.within(inp), inp.within(out)
            if not (inside or contains):
                continue
            relation = "is" if inside and contains else "is inside" if inside else "contains"
            raise InputError(
                f"the {what} {relation} the {label} {_shown(given, inp)}: outputs are never written where inputs "
                f"live (they would overwrite or mix with them); choose another {what}, neither inside nor around it",
                _shown(output, out),
            )


def _shown(given: str | os.PathLike, place: _Place) -> str:
    """The path as given, with its resolved form when that differs (a symlink, ``..``)."""
    given = os.fspath(given)
    return given if Path(given).absolute() == place.path else f"{given} (= {place.path})"


def _file_ancestor(path: Path) -> Path | None:
    """The nearest ancestor of ``path`` that exists and is not a folder, if any."""
    for parent in path.parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def prepare_output_folder(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Create ``path`` (with its parents) and check that files can be written into it.

    Returns:
        ``path`` as a Path.

    Raises:
        InputError: ``path`` is an existing file, a parent is a file, or the folder cannot be
            created or written to (permissions, read-only filesystem); the message names the path.
    """
    from vidprop.io.atomic import temp_path

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"the {what} is an existing file; give a folder (it is created if missing)", path)
    blocker = _file_ancestor(path.absolute())
    if blocker is not None:
        raise InputError(f"cannot create the {what}: {blocker} is a file, not a folder", path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the {what} ({exc.strerror or exc})", path) from None
    try:
        probe = temp_path(path / ".vidprop-write-check")
    except OSError as exc:
        raise InputError(f"the {what} is not writable ({exc.strerror or exc})", path) from None
    with contextlib.suppress(OSError):
        probe.unlink()
    return path


def source_identity(source: str | os.PathLike) -> dict:
    """What identifies a source's frames without decoding them.

    A folder of frames: its frame names and file sizes (hashed), not modification times, so a
    copy of the folder is the same source. A video file: its size and modification time.

    Returns:
        A small JSON-able dict (``{"frames": n, "frames_sha256": ...}`` or
        ``{"video_bytes": ..., "video_mtime_ns": ...}``); ``{}`` when ``source`` is not on disk.
    """
    from vidprop.io.image_folder import list_frame_files

    path = Path(source)
    try:
        if path.is_dir():
            digest = hashlib.sha256()
            files = list_frame_files(path)
            for file in files:
                digest.update(f"{file.name}\t{file.stat().st_size}\n".encode("utf-8", "surrogateescape"))
            return {"frames": len(files), "frames_sha256": digest.hexdigest()[:32]}
        st = path.stat()
    except OSError:
        return {}
    return {"video_bytes": st.st_size, "video_mtime_ns": st.st_mtime_ns}


def masks_digest(masks: Iterable[tuple[str, str | os.PathLike]]) -> str | None:
    """SHA-256 of the masks, in the given order: for each, what it is the mask of (e.g. its frame)
    and its file's content. None if a file cannot be read."""
    digest = hashlib.sha256()
    try:
        for what, mask in masks:
            digest.update(f"{what}\n".encode("utf-8", "surrogateescape"))
            digest.update(Path(mask).read_bytes())
    except OSError:
        return None
    return digest.hexdigest()[:32]


def input_identity(source: str | os.PathLike, masks: Iterable[tuple[str, str | os.PathLike]]) -> dict:
    """What a completion marker records about a video's inputs: ``{"source": ..., "masks_sha256": ...}``.

    Args:
        source: the frames folder or video file.
        masks: ``(what it is the mask of, file)`` pairs, e.g. ``("first frame", path)``.
    """
    return {"source": source_identity(source), "masks_sha256": masks_digest(masks)}


_REASONS = {
    "fingerprint": "the settings changed",
    "masks_sha256": "the mask changed (its content, or the frame it is given for)",
}


def changed_inputs(recorded: Mapping, expected: Mapping) -> list[str]:
    """Why outputs recorded with ``recorded`` (a completion marker) are stale for ``expected``.

    Both map ``"fingerprint"`` (the settings' result fingerprint) and the keys of :func:`input_identity`.
    A value that could not be computed (None or ``{}``) never matches, so the video is redone.

    Returns:
        Human-readable reasons, empty when the outputs are up to date.
    """
    reasons = []
    for key in ("fingerprint", "masks_sha256"):
        if not expected.get(key) or recorded.get(key) != expected.get(key):
            reasons.append(_REASONS[key])
    source, before = expected.get("source") or {}, recorded.get("source") or {}
    if not source or source != before:
        if "video_bytes" in source:
            reasons.append("the video file changed (size or modification time)")
        else:
            reasons.append("the frames changed (names or file sizes)")
    return reasons
