"""Data stage: frame sources (image folders, video files, DAVIS), resizing, prefetch and mask I/O.

The names below are loaded lazily (PEP 562), so ``from vidprop.io.atomic import atomic_write``
or ``from vidprop.io.masks import read_mask`` does not pull in torch or OpenCV, and nothing
here imports a video decoder until a video is opened.
"""

from __future__ import annotations

from vidprop.lazy import lazy_exports

_EXPORTS = {
    "atomic_save": "atomic",
    "atomic_write": "atomic",
    "clear_complete": "atomic",
    "is_complete": "atomic",
    "mark_complete": "atomic",
    "DataConfig": "config",
    "DavisDataset": "davis",
    "IMAGE_EXTENSIONS": "frames",
    "VIDEO_EXTENSIONS": "frames",
    "Frame": "frames",
    "FrameSource": "frames",
    "is_video_file": "frames",
    "natural_key": "frames",
    "open_source": "frames",
    "ImageFolderSource": "image_folder",
    "VOID_ID": "masks",
    "LabelMask": "masks",
    "ObjectIds": "masks",
    "davis_palette": "masks",
    "labels_to_onehot": "masks",
    "onehot_to_labels": "masks",
    "read_label_image": "masks",
    "read_mask": "masks",
    "write_mask": "masks",
    "prefetch": "prefetch",
    "ResizePolicy": "resize",
    "VideoFileSource": "video",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
