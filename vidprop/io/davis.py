"""The DAVIS-2017 folder layout, in one place (the runner, ``extract`` and the scorer read it here).

::

    <root>/JPEGImages/<resolution>/<seq>/00000.jpg ...
    <root>/Annotations/<resolution>/<seq>/00000.png ...   (semi-supervised: at least the first frame)
    <root>/ImageSets/<year>/<split>.txt                   one sequence name per line
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from vidprop.errors import DavisLayoutError

if TYPE_CHECKING:
    from vidprop.io.image_folder import ImageFolderSource

__all__ = ["DavisDataset", "read_split", "RESOLUTIONS"]

logger = logging.getLogger(__name__)


def read_split(split_file: Path) -> list[str]:
    """Sequence names of an existing split list, in file order (blank lines and duplicates dropped).

    Raises:
        DavisLayoutError: the list names no sequence.
    """
    names = [line.strip() for line in split_file.read_text(encoding="utf-8").splitlines()]
    sequences = list(dict.fromkeys(n for n in names if n))
    if not sequences:
        raise DavisLayoutError("split file lists no sequences", split_file)
    return sequences


RESOLUTIONS = ("480p", "Full-Resolution")


class DavisDataset:
    """Sequences of one DAVIS split, with their frames and annotations: the one reader of the layout.

    The runner (frames and first masks), ``vidprop extract`` (frames only) and the scorer (ground
    truth only) all read the layout through this class, at one resolution, so a Full-Resolution
    run is scored against Full-Resolution ground truth.

    Opening checks the layout and, when ``frames`` is set, that every sequence of the split has
    a frame folder; frames and annotations are read only when asked for.

    Args:
        root: the DAVIS root (holding JPEGImages, Annotations, ImageSets).
        split: name of a split list in ``ImageSets/<year>/`` ("val", "train", "test-dev", ...).
        resolution: "480p" or "Full-Resolution" (the sub-folder of JPEGImages and Annotations).
        year: the ImageSets sub-folder.
        frames: require ``JPEGImages/<resolution>`` and a frame folder for every sequence.
        annotations: require ``Annotations/<resolution>``.

    Attributes:
        root, split, resolution: as given (root as a Path).
        images_dir, annotations_dir: ``JPEGImages/<resolution>``, ``Annotations/<resolution>``.
        split_file: ``ImageSets/<year>/<split>.txt``.
        sequences: sequence names in split-file order (blank lines and duplicates dropped).

    Raises:
        DavisLayoutError: missing root, ImageSets/<year> or a required JPEGImages/<resolution> or
            Annotations/<resolution>; no such split file (the message lists the available ones);
            an empty split; a listed sequence without a frame folder.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "val",
        resolution: str = "480p",
        year: str = "2017",
        *,
        frames: bool = True,
        annotations: bool = True,
    ):
        root = Path(root)
        if not root.is_dir():
            raise DavisLayoutError("DAVIS root does not exist or is not a folder", root)
        self.root = root
        self.split = split
        self.resolution = resolution
        self.images_dir = root / "JPEGImages" / resolution
        self.annotations_dir = root / "Annotations" / resolution
        sets_dir = root / "ImageSets" / year
        required = [f for f, need in ((self.images_dir, frames), (self.annotations_dir, annotations), (sets_dir, True)) if need]
        for folder in required:
            if not folder.is_dir():
                expected = ", ".join(str(f.relative_to(root)) for f in required)
                raise DavisLayoutError(f"not a DAVIS root: missing folder {folder.relative_to(root)} (expected {expected})", root)
        self.split_file = sets_dir / f"{split}.txt"
        if not self.split_file.is_file():
            available = sorted(p.stem for p in sets_dir.glob("*.txt"))
            raise DavisLayoutError(
                f"no sequence list for split {split!r} (expected ImageSets/{year}/{split}.txt; "
                f"available: {', '.join(available) or 'none'})",
                self.split_file,
            )
        self.sequences: list[str] = read_split(self.split_file)
        missing = [s for s in self.sequences if not (self.images_dir / s).is_dir()] if frames else []
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise DavisLayoutError(
                f"{len(missing)} sequence(s) of split {split!r} have no frame folder in "
                f"JPEGImages/{resolution}: {shown}",
                self.images_dir,
            )
        logger.debug("%s: split %s with %d sequences", root, split, len(self.sequences))

    def __len__(self) -> int:
        return len(self.sequences)

    def __repr__(self) -> str:
        return f"DavisDataset({str(self.root)!r}, split={self.split!r}, resolution={self.resolution!r}, sequences={len(self)})"

    def select(self, sequences: Sequence[str] | None = None) -> list[str]:
        """The split's sequences, or those of ``sequences`` (kept in split order); None or empty = all.

        Raises:
            DavisLayoutError: a requested sequence is not in the split.
        """
        if not sequences:
            return list(self.sequences)
        unknown = [s for s in sequences if s not in self.sequences]
        if unknown:
            raise DavisLayoutError(
                f"sequence(s) not in split {self.split!r}: {', '.join(unknown)} (the split lists {len(self.sequences)})",
                self.split_file,
            )
        wanted = set(sequences)
        return [s for s in self.sequences if s in wanted]

    def check_sequence(self, seq: str) -> None:
        """Raise :class:`DavisLayoutError` unless ``seq`` is in the split."""
        if seq not in self.sequences:
            raise DavisLayoutError(f"sequence {seq!r} is not in split {self.split!r}", self.split_file)

    def frames(self, seq: str) -> "ImageFolderSource":
        """The frames of sequence ``seq`` (DAVIS names them 00000, 00001, ...)."""
        # Readers are imported when used: the CLI imports this module (RESOLUTIONS) to build its parser.
        from vidprop.io.image_folder import ImageFolderSource

        self.check_sequence(seq)
        return ImageFolderSource(self.images_dir / seq)

    def annotation_paths(self, seq: str) -> list[Path]:
        """The annotation PNGs of ``seq`` in natural order (all frames for train/val, one for test-dev)."""
        from vidprop.io.masks import list_mask_files

        self.check_sequence(seq)
        folder = self.annotations_dir / seq
        if not folder.is_dir():
            raise DavisLayoutError(f"sequence {seq!r} has no annotation folder", folder)
        paths = list_mask_files(folder)
        if not paths:
            raise DavisLayoutError(f"sequence {seq!r} has no annotation PNGs", folder)
        return paths

    def first_mask_path(self, seq: str, frames: "ImageFolderSource | None" = None) -> Path:
        """The annotation of ``seq``'s first frame (same name as the first JPEG, with .png).

        Args:
            frames: the sequence's frames if already opened (else they are opened here).
        """
        first_frame = (frames if frames is not None else self.frames(seq)).files[0]
        path = self.annotations_dir / seq / f"{first_frame.stem}.png"
        if not path.is_file():
            raise DavisLayoutError(f"sequence {seq!r} has no annotation for its first frame {first_frame.name}", path)
        return path
