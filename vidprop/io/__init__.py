"""Data stage: frame sources (image folders, video files, DAVIS), resizing, prefetch and mask I/O.

Importing this package does not import decord (the video backend is chosen on first use).
"""

from vidprop.io.atomic import atomic_save, atomic_write, clear_complete, is_complete, mark_complete
from vidprop.io.config import DataConfig
from vidprop.io.davis import DavisDataset
from vidprop.io.frames import (
    IMAGE_EXTENSIONS,
    VIDEO_EXTENSIONS,
    Frame,
    FrameSource,
    is_video_file,
    natural_key,
    open_source,
)
from vidprop.io.image_folder import ImageFolderSource
from vidprop.io.masks import (
    VOID_ID,
    LabelMask,
    ObjectIds,
    davis_palette,
    labels_to_onehot,
    onehot_to_labels,
    read_label_image,
    read_mask,
    write_mask,
)
from vidprop.io.prefetch import prefetch
from vidprop.io.resize import ResizePolicy
from vidprop.io.video_file import VideoFileSource

__all__ = [
    "DataConfig",
    "DavisDataset",
    "Frame",
    "FrameSource",
    "IMAGE_EXTENSIONS",
    "ImageFolderSource",
    "LabelMask",
    "ObjectIds",
    "ResizePolicy",
    "VIDEO_EXTENSIONS",
    "VOID_ID",
    "VideoFileSource",
    "atomic_save",
    "atomic_write",
    "clear_complete",
    "davis_palette",
    "is_complete",
    "is_video_file",
    "labels_to_onehot",
    "mark_complete",
    "natural_key",
    "onehot_to_labels",
    "open_source",
    "prefetch",
    "read_label_image",
    "read_mask",
    "write_mask",
]
