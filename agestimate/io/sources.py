"""Sources: what the files, folders and glob patterns a user names stand for, decided once.

`embed` and `predict` (Python and CLI) both call `expand_sources`, so both follow the same
rules: files are taken as given, whatever their suffix (a bad one gets an error with its
reason); folders give the images and videos in them, by suffix, in sorted order, recursively
with ``recursive=True`` (symbolic links to folders are not followed, so there are no loops);
glob patterns give the files they match (``**`` only with ``recursive=True``). Folder entries
that are neither images nor videos are listed as ignored, patterns that match nothing as
unmatched, so a summary can say so.

`annotated_paths` gives each input its own annotated output, keeping the input's path below
the folder all inputs share.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"}
# What cv2.imwrite writes; other images get ".png" appended to their annotated copy.
WRITABLE_SUFFIXES = IMAGE_SUFFIXES - {".gif"}
GLOB_CHARACTERS = "*?["


@dataclass
class Sources:
    """What `expand_sources` found, each list in the order of the sources given.

    images : image files, and files named explicitly that are not videos.
    videos : video files (by suffix).
    ignored : folder entries that are neither images nor videos.
    unmatched : glob patterns that matched no file.
    """

    images: list[Path] = field(default_factory=list)
    videos: list[Path] = field(default_factory=list)
    ignored: list[Path] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)


def is_video(path: str | Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def _walk(folder: Path, recursive: bool) -> Iterable[Path]:
    for root, folders, names in os.walk(folder):  # os.walk does not follow symbolic links to folders
        folders.sort()
        for name in sorted(names):
            yield Path(root) / name
        if not recursive:
            return


def _glob(pattern: str, recursive: bool) -> list[Path]:
    """Files matching `pattern`, sorted; pathlib's ``**`` does not follow symbolic links to folders."""
    path = Path(pattern)
    parts = [part if recursive or part != "**" else "*" for part in path.parts[1 if path.anchor else 0:]]
    return sorted(match for match in Path(path.anchor or ".").glob(str(Path(*parts))) if not match.is_dir())


def expand_sources(sources: Iterable[str | os.PathLike], *, recursive: bool = False) -> Sources:
    """Expand files, folders and glob patterns into image and video files (see the module docstring).

    Parameters
    ----------
    sources : paths of files or folders, or glob patterns such as ``photos/*.jpg``.
    recursive : walk folders into their subfolders, and let ``**`` in patterns match them.
    """
    if isinstance(sources, (str, os.PathLike)):
        raise TypeError(f"sources must be a list of paths or patterns, got the single {type(sources).__name__} {sources!r}")
    found = Sources()
    for source in sources:
        text = os.fspath(source)
        if Path(text).is_dir():
            for path in _walk(Path(text), recursive):
                suffix = path.suffix.lower()
                (found.images if suffix in IMAGE_SUFFIXES else found.videos if suffix in VIDEO_SUFFIXES
                 else found.ignored).append(path)
        elif isinstance(source, str) and any(character in text for character in GLOB_CHARACTERS) and not Path(text).exists():
            matches = _glob(text, recursive)
            if not matches:
                found.unmatched.append(text)
            for path in matches:
                (found.videos if is_video(path) else found.images).append(path)
        else:  # a file, or a path that does not exist: reading it will say why
            (found.videos if is_video(text) else found.images).append(Path(text))
    return found


def annotated_paths(inputs: Iterable[str | Path], folder: str | Path) -> dict[str, Path]:
    """Where the annotated copy of each input goes, one distinct file per input.

    Each input keeps its path below the folder shared by all inputs (``a/x.jpg`` and
    ``b/x.jpg`` become ``folder/a/x.jpg`` and ``folder/b/x.jpg``) and its full name;
    images keep their format where OpenCV writes it, else get ".png" appended (``x.gif`` ->
    ``x.gif.png``); videos become MJPG ``.avi`` files (``clip.mp4`` -> ``clip.mp4.avi``).
    Camera indices (int) become ``webcamN.avi``.
    """
    folder = Path(folder)
    inputs = list(dict.fromkeys(inputs))
    files = [Path(os.path.abspath(i)) for i in inputs if not isinstance(i, int)]
    common = Path(os.path.commonpath([p.parent for p in files])) if files else Path()
    targets, taken = {}, set()
    for source in inputs:
        if isinstance(source, int):
            name = Path(f"webcam{source}.avi")
        else:
            path = Path(os.path.abspath(source))
            name = path.relative_to(common)
            suffix = path.suffix.lower()
            wanted = ".avi" if suffix in VIDEO_SUFFIXES else suffix if suffix in WRITABLE_SUFFIXES else ".png"
            if suffix != wanted:
                name = name.with_name(name.name + wanted)
        target, copy = folder / name, 1
        while target in taken:  # only when an input's name already ends like another's output
            target, copy = folder / name.with_name(f"{name.stem}-{copy}{name.suffix}"), copy + 1
        taken.add(target)
        targets[str(source) if not isinstance(source, int) else source] = target
    return targets
