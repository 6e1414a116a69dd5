"""Keyframes: masks given on any frames of a video, objects that enter later, every frame labelled.

A video's annotation is a set of keyframes, each a mask on one frame, matched to its frame by
name (mask ``00004.png`` belongs to frame ``00004``) or by index. :func:`as_keyframes` matches and
checks them; :class:`KeyframePropagation` carries them through the video's feature maps:

- Forward from the first keyframe, as the first frame is propagated today: each keyframe enters
  the propagation context permanently (:meth:`~vidprop.propagation.LabelPropagator.add_keyframe`)
  and its frame's output is its mask as given. Objects first seen in a later keyframe get new
  label channels from that frame on; the context frames before it count as "not this object".
- Frames before the first keyframe are labelled by propagating backwards in time from it (the same
  algorithm on the frames in reverse order, with the first keyframe's objects), unless
  ``propagation.backward`` is false: then they are left empty (background).

Two meanings of a later mask, set by the input layout (never guessed from the pixels):

- replace (masks given per frame, ``--mask``/``--masks``): the mask is the whole truth on its
  frame; every object it lacks is background there (a warning names objects that earlier masks
  gave and it lacks).
- first appearance (the YouTube-VOS layout; ``first_appearance=True``): the mask gives only the
  objects it shows, as YouTube-VOS's sparse ``Annotations/<video>/`` masks do; its 0 (and 255)
  pixels mean "not annotated". Objects it shows are set as given; the others keep their
  propagated labels except on its object pixels (as XMem/Cutie merge such masks).

Output ids are the original ids throughout (:class:`~vidprop.io.masks.ObjectIds` holds every
object in channel order, the order of first appearance).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from vidprop.errors import MaskError, ShapeError, SourceError
from vidprop.features.base import FeatureMap
from vidprop.io.frames import Frame
from vidprop.io.masks import VOID_ID, LabelMask, ObjectIds, labels_to_onehot
from vidprop.propagation.config import PropagationConfig

__all__ = ["Keyframe", "Keyframes", "as_keyframes", "KeyframePropagation"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class Keyframe:
    """One given mask.

    Attributes:
        index: 0-based index of its frame.
        name: its frame's name.
        mask: the mask (ids, objects, palette), of the frames' size.
        new_ids: ids of the objects first given here, in channel order.
    """

    index: int
    name: str
    mask: LabelMask
    new_ids: tuple[int, ...]


@dataclass(frozen=True, eq=False)
class Keyframes:
    """A video's keyframes, checked and in frame order.

    Attributes:
        frames: the keyframes, by increasing frame index (at least one).
        object_ids: every object of the video in channel order (first keyframe's objects by id,
            then each later keyframe's new objects by id).
        first_appearance: later masks give only the objects they show (YouTube-VOS), instead of
            replacing every label on their frame.
    """

    frames: tuple[Keyframe, ...]
    object_ids: ObjectIds
    first_appearance: bool = False

    @property
    def first(self) -> Keyframe:
        """The earliest keyframe (propagation starts there)."""
        return self.frames[0]

    @property
    def palette(self) -> np.ndarray | None:
        """The first keyframe's palette (None for a grayscale PNG or an array)."""
        return self.first.mask.palette

    def at(self, index: int) -> Keyframe | None:
        """The keyframe of frame ``index``, if any."""
        return self._by_index.get(index)

    @property
    def _by_index(self) -> dict[int, Keyframe]:
        cached = self.__dict__.get("_index")
        if cached is None:
            cached = {k.index: k for k in self.frames}
            object.__setattr__(self, "_index", cached)
        return cached


def _key_index(key: Any, value: Any, names: Sequence[str] | None, count: int | None, video: str) -> tuple[int, str]:
    """(frame index, frame name) of a mapping key: a frame index (int) or a frame name (str)."""
    what = f"mask {_mask_label(value)}" if isinstance(value, (str, os.PathLike)) else "a mask"
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        index = int(key)
        if index < 0 or (count is not None and index >= count):
            raise MaskError(f"{what} is given for frame index {index}, but {video} has {count} frames (0..{count - 1})"
                            if count is not None else f"{what} is given for frame index {index} (indices start at 0)")
        return index, names[index] if names is not None else f"{index:05d}"
    if isinstance(key, str):
        if names is None:
            raise MaskError(f"{what} for frame {key!r} cannot be matched by name: the frame names of {video} are "
                            "known only while reading it (a stream of arrays); key the masks by frame index")
        try:
            return names.index(key), key
        except ValueError:
            shown = ", ".join(names[:3]) + (f", ..., {names[-1]}" if len(names) > 3 else "")
            raise MaskError(f"{what} is given for frame {key!r}, but {video} has no frame of that name "
                            f"({len(names)} frames: {shown}); a mask belongs to the frame of the same name") from None
    raise MaskError(f"masks must be keyed by frame index (int) or frame name (str), got {type(key).__name__} {key!r}")


def _mask_label(value: Any) -> str:
    return os.fspath(value) if isinstance(value, (str, os.PathLike)) else type(value).__name__


def as_keyframes(
    masks: Any,
    size: tuple[int, int],
    names: Sequence[str] | None = None,
    count: int | None = None,
    *,
    first_appearance: bool = False,
    video: str = "the video",
    read: Any = None,
) -> Keyframes:
    """Match and check a video's masks.

    Args:
        masks: one mask (a path, an (H, W) integer array or a LabelMask: frame 0's), or a mapping
            from frame index (int) or frame name (str) to such a mask.
        size: (H, W) of the frames; every mask must have it.
        names: the frame names in order (None when unknown up front, e.g. a stream of arrays:
            then masks are keyed by index only).
        count: the number of frames (None when unknown).
        first_appearance: later masks give only the objects they show (see the module doc).
        video: the video's name for messages.
        read: ``read(mask, size) -> LabelMask`` (default:
            :func:`~vidprop.pipeline.inputs.as_label_mask`).

    Returns:
        The keyframes in frame order.

    Raises:
        MaskError: a key matching no frame (the message names the key and the frames), a mask
            that cannot be read, of another size or without object, two masks for one frame,
            no mask at all, or a mask for every frame of a video of several frames (a dense
            ground-truth folder given as masks: nothing would be propagated).
    """
    if read is None:
        from vidprop.pipeline.inputs import as_label_mask as read
    if not isinstance(masks, Mapping):
        masks = {0: masks}
    if not masks:
        raise MaskError(f"no mask given for {video}")
    located: dict[int, tuple[str, Any]] = {}
    for key, value in masks.items():
        index, name = _key_index(key, value, names, count, video)
        if index in located:
            raise MaskError(f"two masks for frame {name} of {video}: {_mask_label(located[index][1])} and {_mask_label(value)}")
        located[index] = (name, value)
    if count is not None and count > 1 and len(located) == count:
        first = located[0][1]
        where = f" ({Path(first).parent})" if isinstance(first, (str, os.PathLike)) else ""
        raise MaskError(
            f"every one of the {count} frames of {video} has a mask{where}: nothing would be propagated. A dense "
            "ground-truth folder (e.g. DAVIS's Annotations/480p/<video>/) is not a set of masks to start from: give "
            "the first frame's mask alone (<video>.png in --masks, or --mask), or only the frames to start from "
            "(vidprop davis takes the first frame's from a DAVIS root)"
        )
    frames: list[Keyframe] = []
    known: list[int] = []
    for index in sorted(located):
        name, value = located[index]
        mask = read(value, size)
        ids = mask.object_ids.ids
        new = tuple(i for i in ids if i not in known)
        if frames and not first_appearance:
            lost = [i for i in known if i not in ids]
            if lost:
                logger.warning(
                    "%s: the mask of frame %s has no object %s, which earlier masks give: a mask replaces every label "
                    "of its frame, so %s background there (masks that give only the objects that start on their "
                    "frame are the YouTube-VOS layout: JPEGImages/ and Annotations/ folders)",
                    video, name, ", ".join(map(str, lost)), "it is" if len(lost) == 1 else "they are",
                )
        known.extend(new)
        frames.append(Keyframe(index=index, name=name, mask=mask, new_ids=new))
    if len(known) >= 256:
        raise MaskError(f"{video}: {len(known)} objects over all masks (at most 255)")
    return Keyframes(frames=tuple(frames), object_ids=ObjectIds(tuple(known)), first_appearance=first_appearance)


@contextlib.contextmanager
def _about(frame: Frame) -> Iterator[None]:
    """Name ``frame`` in a propagation error about its features (the propagator knows no frame names)."""
    try:
        yield
    except ShapeError as exc:
        raise ShapeError(f"frame {frame.name} (index {frame.index}): {exc}") from exc


class KeyframePropagation:
    """A video's keyframes carried through its feature maps with one propagation setting.

    Drive it in two phases (:mod:`vidprop.pipeline.stream` does):

    1. when :attr:`needs_backward`: :meth:`backward` with the frames ``start, start - 1, ..., 0``
       (the first keyframe's frame first), which yields the masks of frames ``start - 1 .. 0``;
    2. :meth:`step` for every frame from ``start`` on, in order.

    Frames before ``start`` without the backward phase are :meth:`empty` (background).

    Args:
        keyframes: the video's keyframes.
        config: the propagation setting (``config.backward`` decides phase 1).
        shared: a :class:`~vidprop.propagation.SharedCandidates` for its propagators (several
            settings through one video), or None.
    """

    def __init__(self, keyframes: Keyframes, config: PropagationConfig, shared: Any = None):
        self.keyframes = keyframes
        self.config = config
        self.shared = shared
        self._forward = None
        self._channels = 0

    @property
    def start(self) -> int:
        """Index of the first keyframe's frame."""
        return self.keyframes.first.index

    @property
    def needs_backward(self) -> bool:
        """Whether frames before the first keyframe are filled backwards (``propagation.backward``)."""
        return self.start > 0 and self.config.backward

    def empty(self, frame: Frame) -> np.ndarray:
        """The mask of a frame before the first keyframe without backward filling: background."""
        return np.zeros(frame.size, np.uint8)

    def _onehot(self, keyframe: Keyframe, channels: int, grid: tuple[int, int]) -> Tensor:
        return labels_to_onehot(self.keyframes.object_ids.to_channels(keyframe.mask.ids), channels, grid)

    def _propagator(self, features: Tensor, keyframe: Keyframe) -> tuple[Any, int]:
        from vidprop.propagation import LabelPropagator

        channels = 1 + len(keyframe.new_ids)
        prop = LabelPropagator(self.config, self.shared)
        prop.reset(features, self._onehot(keyframe, channels, tuple(features.shape[-2:])).to(features.device))
        return prop, channels

    @torch.inference_mode()
    def backward(self, frames: Iterable[tuple[Frame, FeatureMap]]) -> Iterator[tuple[Frame, np.ndarray]]:
        """Fill the frames before the first keyframe by propagating backwards from it.

        Args:
            frames: ``(frame, feature map)`` of frames ``start, start - 1, ..., 0``, in this order.

        Yields:
            ``(frame, (H, W) uint8 ids)`` of frames ``start - 1, ..., 0``, in this order.

        Raises:
            SourceError: frames out of that order.
        """
        first = self.keyframes.first
        expected = self.start
        prop = None
        for frame, fmap in frames:
            if frame.index != expected:
                raise SourceError(f"backward pass: got frame {frame.index} ({frame.name}), expected frame {expected}")
            expected -= 1
            if prop is None:
                prop, _ = self._propagator(fmap.features, first)
                continue
            with _about(frame):
                ids = self.keyframes.object_ids.to_ids(prop.to_mask(prop.step(fmap.features), fmap.stride, frame.size))
            yield frame, ids
        if expected != -1:
            raise SourceError(f"backward pass ended at frame {expected + 1}, before frame 0")

    @torch.inference_mode()
    def step(self, frame: Frame, fmap: FeatureMap) -> np.ndarray:
        """The mask of ``frame`` (from the first keyframe's frame on, in order): a keyframe's own
        mask (merged with the propagated labels in first-appearance mode), else propagated.

        Args:
            frame: the frame (index, name and size are used).
            fmap: its feature map.

        Raises:
            ShapeError: non-finite features, naming the frame (on a GPU the check is read with
                the frame's mask, see :meth:`~vidprop.propagation.LabelPropagator.step`).

        Returns:
            (H, W) uint8 ids.
        """
        with _about(frame):
            return self._step(frame, fmap)

    def _step(self, frame: Frame, fmap: FeatureMap) -> np.ndarray:
        features, stride = fmap.features, fmap.stride
        keyframe = self.keyframes.at(frame.index)
        if self._forward is None:
            if keyframe is not self.keyframes.first:
                raise SourceError(f"forward pass: got frame {frame.index} ({frame.name}) before the first keyframe's "
                                  f"frame {self.start} ({self.keyframes.first.name})")
            self._forward, self._channels = self._propagator(features, keyframe)
            return keyframe.mask.ids
        prop = self._forward
        if keyframe is None:
            soft = prop.step(features)
            return self.keyframes.object_ids.to_ids(prop.to_mask(soft, stride, frame.size))
        self._channels += len(keyframe.new_ids)
        grid = tuple(features.shape[-2:])
        if not self.keyframes.first_appearance:
            prop.add_keyframe(features, self._onehot(keyframe, self._channels, grid).to(features.device))
            return keyframe.mask.ids
        return self._merge(prop, keyframe, features, stride, frame)

    def _merge(self, prop, keyframe: Keyframe, features: Tensor, stride: int, frame: Frame) -> np.ndarray:
        """A first-appearance mask: the objects it shows as given, the others propagated except
        on its object pixels (XMem's merge of YouTube-VOS masks)."""
        object_ids = self.keyframes.object_ids
        shown = [object_ids.ids.index(i) + 1 for i in keyframe.mask.object_ids.ids]
        soft = prop.predict(features)
        rest = soft.clone()
        rest[[c for c in shown if c < rest.shape[0]]] = 0  # shown objects are where the mask says, nowhere else
        ids = keyframe.mask.ids
        given = (ids != 0) & (ids != VOID_ID)
        out = object_ids.to_ids(prop.to_mask(rest, stride, frame.size))
        out[given] = ids[given]
        # context labels: the mask's objects one-hot on its object cells, elsewhere the rest renormalised
        grid = tuple(features.shape[-2:])
        onehot = self._onehot(keyframe, self._channels, grid).to(soft.device, soft.dtype)
        annotated = onehot[0] == 0
        merged = torch.zeros_like(onehot)
        merged[: rest.shape[0]] = rest
        total = merged.sum(0)
        merged[0] = torch.where(total > 0, merged[0], torch.ones_like(total))
        merged = merged / merged.sum(0, keepdim=True)
        merged = torch.where(annotated, onehot, merged)
        prop.add_keyframe(features, merged)
        return out


FeatureFn = Callable[[Iterable[Frame]], Iterator[tuple[Frame, FeatureMap]]]


def _length(source: Any) -> int | None:
    try:
        return len(source)
    except TypeError:  # a stream of unknown length
        return None


def propagate_keyframes(propagation: KeyframePropagation, source: Any, features: FeatureFn) -> Iterator[tuple[Frame, np.ndarray]]:
    """Every frame's mask, in frame order, from a video's keyframes.

    Frames before the first keyframe are filled first (backwards, see
    :meth:`KeyframePropagation.backward`): from ``source.read(index)`` where the source has it
    (image folders), else from the frames up to the first keyframe decoded once and kept in
    memory. Their masks are kept compressed until their turn comes.

    Args:
        propagation: the video's keyframes and propagation setting.
        source: the frames (a :class:`~vidprop.io.frames.FrameSource` or any iterable of frames;
            iterated once, from the start).
        features: turns an iterable of frames into ``(frame, feature map)`` in the same order
            (decoding ahead and batching as it likes).

    Yields:
        ``(frame, (H, W) uint8 ids)`` for every frame, by increasing index.

    Raises:
        MaskError: a keyframe past the video's last frame.
    """
    start = propagation.start
    count = _length(source)
    last = propagation.keyframes.frames[-1]
    if count is not None and last.index >= count:
        raise MaskError(f"a mask is given for frame {last.index}, but the video has {count} frames (0..{count - 1})")
    frames = iter(source)
    head: list[Frame] = []  # frames decoded for the backward pass (sources without random access)
    filled: dict[int, bytes] = {}  # zlib-compressed masks of the frames before the first keyframe
    if propagation.needs_backward:
        reader = getattr(source, "read", None)
        if reader is not None:
            back: Iterable[Frame] = (reader(i) for i in range(start, -1, -1))
        else:
            head = list(itertools.islice(frames, start + 1))
            if len(head) <= start:
                raise MaskError(f"a mask is given for frame {start}, but the video has {len(head)} frames")
            if start >= 64:
                logger.info("keeping %d decoded frames in memory for the backward pass (the source has no random access)", start)
            back = reversed(head)
        for frame, ids in propagation.backward(features(back)):
            filled[frame.index] = zlib.compress(np.ascontiguousarray(ids).tobytes(), 1)
    stream = itertools.chain(head, frames)
    rest: Iterator[Frame] = iter(())
    done = 0
    for frame in stream:
        if frame.index >= start:
            rest = itertools.chain([frame], stream)
            break
        packed = filled.pop(frame.index, None)
        if packed is None:
            ids = propagation.empty(frame)
        else:
            ids = np.frombuffer(zlib.decompress(packed), np.uint8).reshape(frame.size).copy()
        yield frame, ids
        done += 1
    for frame, fmap in features(rest):
        yield frame, propagation.step(frame, fmap)
        done += 1
    if done <= last.index:
        raise MaskError(f"a mask is given for frame {last.index}, but the video has {done} frames (0..{done - 1})")
