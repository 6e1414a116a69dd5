"""The YouTube-VOS folder layout (semi-supervised VOS, valid/test split).

::

    <root>/JPEGImages/<video>/00000.jpg ...
    <root>/Annotations/<video>/00000.png ...   sparse: a mask on each frame where objects first appear,
                                                holding only those objects (0 = not annotated)
    <root>/meta.json                            optional: {"videos": {<video>: {"objects":
                                                {<id>: {"frames": [<first frame>, ...]}}}}}

Each mask belongs to the frame of the same name. Objects may first appear on any frame, so a
video's first mask need not be on its first frame (frames before it are labelled backwards, see
:mod:`vidprop.pipeline.keyframes`). When ``meta.json`` is present, its videos and objects must
agree with the folders: every listed video has frames and masks, and each object's first listed
frame is the first mask that holds it (the semantics of meta.json's ``frames`` in the valid split).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vidprop.errors import SourceError
from vidprop.io.frames import natural_key
from vidprop.io.image_folder import ImageFolderSource
from vidprop.io.masks import VOID_ID, list_mask_files, read_label_image

__all__ = ["YouTubeVosVideo", "is_youtube_vos", "read_youtube_vos"]

logger = logging.getLogger(__name__)

FRAMES, MASKS, META = "JPEGImages", "Annotations", "meta.json"


@dataclass(frozen=True)
class YouTubeVosVideo:
    """One video of the layout.

    Attributes:
        name: the video's folder name.
        frames: its frame folder ``JPEGImages/<video>``.
        masks: ``{frame name: mask file}`` of ``Annotations/<video>``, in frame order.
    """

    name: str
    frames: Path
    masks: dict[str, Path]


def is_youtube_vos(root: str | Path) -> bool:
    """Whether ``root`` holds ``JPEGImages/`` and ``Annotations/`` with video folders directly
    inside (DAVIS has a resolution level, ``JPEGImages/480p/``, and an ``ImageSets/`` folder)."""
    root = Path(root)
    frames, masks = root / FRAMES, root / MASKS
    if not (frames.is_dir() and masks.is_dir()) or (root / "ImageSets").is_dir():
        return False
    return any(d.is_dir() and list_mask_files(d) for d in masks.iterdir())


def read_youtube_vos(root: str | Path) -> list[YouTubeVosVideo]:
    """The videos of a YouTube-VOS root, checked (no frame is decoded; masks only with meta.json).

    Returns:
        The videos in natural name order.

    Raises:
        SourceError: no ``JPEGImages``/``Annotations``; a video without frames or without masks;
            a mask named like no frame (naming both); a ``meta.json`` that is not valid JSON,
            lists a video that is missing, or disagrees with the masks about an object's ids or
            first frame.
    """
    root = Path(root)
    frames_root, masks_root = root / FRAMES, root / MASKS
    for folder in (frames_root, masks_root):
        if not folder.is_dir():
            raise SourceError(f"not a YouTube-VOS root: no {folder.name}/ folder", folder)
    names = sorted((d.name for d in frames_root.iterdir() if d.is_dir() and not d.name.startswith(".")), key=natural_key)
    if not names:
        raise SourceError("no video folders", frames_root)
    no_masks = [n for n in names if not (masks_root / n).is_dir() or not list_mask_files(masks_root / n)]
    if no_masks:
        shown = ", ".join(no_masks[:10]) + (f" and {len(no_masks) - 10} more" if len(no_masks) > 10 else "")
        raise SourceError(f"{len(no_masks)} video(s) have no masks in {MASKS}/<video>/: {shown}", masks_root)
    extra = sorted((d.name for d in masks_root.iterdir() if d.is_dir() and d.name not in names), key=natural_key)
    if extra:
        raise SourceError(f"masks for video(s) without frames in {FRAMES}/: {', '.join(extra[:10])}", masks_root)
    videos = []
    for name in names:
        frames = ImageFolderSource(frames_root / name)
        known = set(frames.names)
        masks = {}
        for path in list_mask_files(masks_root / name):
            if path.stem not in known:
                shown = ", ".join(frames.names[:3]) + (f", ..., {frames.names[-1]}" if len(frames.names) > 3 else "")
                raise SourceError(
                    f"mask {path.name} of video {name!r} matches no frame of {FRAMES}/{name} ({len(frames.names)} frames: "
                    f"{shown}); a mask belongs to the frame of the same name",
                    path,
                )
            masks[path.stem] = path
        masks = dict(sorted(masks.items(), key=lambda item: frames.names.index(item[0])))
        videos.append(YouTubeVosVideo(name=name, frames=frames_root / name, masks=masks))
    meta = root / META
    if meta.is_file():
        _check_meta(meta, videos)
    return videos


def _check_meta(path: Path, videos: list[YouTubeVosVideo]) -> None:
    """meta.json agrees with the folders: its videos exist, each object's first frame is its first mask."""
    try:
        listed = json.loads(path.read_text(encoding="utf-8"))["videos"]
        if not isinstance(listed, dict):
            raise TypeError("'videos' is not an object")
    except (ValueError, KeyError, TypeError) as exc:
        raise SourceError(f"not a YouTube-VOS meta.json ({exc}); expected {{\"videos\": {{<video>: ...}}}}", path) from None
    by_name = {v.name: v for v in videos}
    missing = [n for n in listed if n not in by_name]
    if missing:
        raise SourceError(f"meta.json lists {len(missing)} video(s) without folders: {', '.join(sorted(missing)[:10])}", path)
    for name, entry in listed.items():
        video = by_name[name]
        first_seen: dict[int, str] = {}
        for frame, mask in video.masks.items():
            ids = np.flatnonzero(np.bincount(read_label_image(mask).ravel(), minlength=256))
            for i in ids:
                if i not in (0, VOID_ID):
                    first_seen.setdefault(int(i), frame)
        try:
            objects = {int(k): v.get("frames", []) for k, v in entry["objects"].items()}
        except (KeyError, TypeError, ValueError, AttributeError):
            raise SourceError(f"meta.json: video {name!r} has no valid 'objects' entry", path) from None
        if set(objects) != set(first_seen):
            raise SourceError(
                f"meta.json lists objects {sorted(objects)} for video {name!r}, but its masks hold objects {sorted(first_seen)}",
                path,
            )
        for i, frames in objects.items():
            if frames and str(frames[0]) != first_seen[i]:
                raise SourceError(
                    f"meta.json: object {i} of video {name!r} first appears on frame {frames[0]}, but its first mask is "
                    f"{first_seen[i]}.png",
                    path,
                )
    logger.info("%s: checked %d video(s) against the folders", path, len(listed))
