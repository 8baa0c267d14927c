"""One rule for what sources stand for (embed and predict), and one annotated output per input."""

from pathlib import Path

import pytest

from agestimate.io.sources import annotated_paths, expand_sources


@pytest.fixture
def tree(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("a/x.jpg", "a/B.PNG", "a/sub/y.jpg", "a/clip.mp4", "a/notes.txt", "b/x.jpg", "odd.name"):
        Path(name).parent.mkdir(parents=True, exist_ok=True)
        Path(name).write_bytes(b"")
    (tmp_path / "a" / "loop").symlink_to(tmp_path / "a", target_is_directory=True)
    return tmp_path


def names(paths):
    return [str(path) for path in paths]


def test_folders_give_images_and_videos_by_suffix_in_sorted_order(tree):
    found = expand_sources(["a"])
    assert names(found.images) == ["a/B.PNG", "a/x.jpg"]
    assert names(found.videos) == ["a/clip.mp4"] and names(found.ignored) == ["a/notes.txt"]
    deep = expand_sources(["a", "b"], recursive=True)  # the symbolic link loop is not followed
    assert names(deep.images) == ["a/B.PNG", "a/x.jpg", "a/sub/y.jpg", "b/x.jpg"]


def test_files_are_taken_as_given_and_patterns_expanded(tree):
    found = expand_sources(["odd.name", "missing.jpg", "a/*.jpg", "**/y.jpg", "c/*.jpg", "a/clip.mp4"])
    assert names(found.images) == ["odd.name", "missing.jpg", "a/x.jpg"]  # ** is * unless recursive
    assert names(found.videos) == ["a/clip.mp4"] and found.unmatched == ["**/y.jpg", "c/*.jpg"]
    assert names(expand_sources(["**/y.jpg"], recursive=True).images) == ["a/sub/y.jpg"]
    with pytest.raises(TypeError, match="a list of paths"):
        expand_sources("a")


def test_every_input_keeps_its_own_annotated_output(tmp_path):
    inputs = ["a/x.jpg", "b/x.jpg", "c/x.png", "c/x.jpg", "c/x.gif", "c/x.gif.png", "v/clip.mp4", "v/clip.avi", 0]
    targets = annotated_paths(inputs, tmp_path / "out")
    relative = {source: str(target.relative_to(tmp_path / "out")) for source, target in targets.items()}
    assert relative == {"a/x.jpg": "a/x.jpg", "b/x.jpg": "b/x.jpg", "c/x.png": "c/x.png", "c/x.jpg": "c/x.jpg",
                        "c/x.gif": "c/x.gif.png", "c/x.gif.png": "c/x.gif-1.png", "v/clip.mp4": "v/clip.mp4.avi",
                        "v/clip.avi": "v/clip.avi", 0: "webcam0.avi"}
    assert {target.name for target in annotated_paths(["photos/2020/x.jpg"], tmp_path).values()} == {"x.jpg"}
