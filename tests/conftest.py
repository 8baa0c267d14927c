import time
from pathlib import Path

import numpy as np
import pytest

FIXTURES = Path(__file__).parent / "fixtures"
# ../shared/data beside the checkout (or beside a folder above it, for git worktrees)
SHARED_DATA = next((folder / "shared" / "data" for folder in Path(__file__).resolve().parents[1:]
                    if (folder / "shared" / "data").is_dir()), Path(__file__).resolve().parents[1].parent / "shared" / "data")


# A limit for waits on what comes within seconds on any machine: reached only when it never comes.
PATIENCE_SECONDS = 600


def wait_until(condition, *, what: str, seconds: float = PATIENCE_SECONDS):
    """Poll `condition()` until it is true and return its value; fail naming `what` after `seconds`."""
    deadline = time.monotonic() + seconds
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {seconds} s")
        time.sleep(0.05)
    return value


@pytest.fixture(scope="session", autouse=True)
def empty_model_cache(tmp_path_factory):
    """The suite compiles the models into its own empty cache, as on a fresh machine, whatever
    this machine cached before (its subprocesses inherit the setting)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AGESTIMATE_CACHE", str(tmp_path_factory.mktemp("agestimate-cache")))
        yield


@pytest.fixture(scope="session")
def encoder():
    from agestimate.faces.encoder import FaceEncoder

    return FaceEncoder(threads=2)


@pytest.fixture(scope="session")
def players_path():
    from agestimate.runtime.registry import weights_dir

    return weights_dir() / "players.jpg"


@pytest.fixture
def face_folder(tmp_path):
    """Distinct face images (the UTKFace fixtures and mirrored copies) plus bad files."""
    from PIL import Image

    folder = tmp_path / "faces"
    folder.mkdir()
    for path in sorted((FIXTURES / "utkface").iterdir()):
        (folder / path.name).write_bytes(path.read_bytes())
        mirrored = Image.open(path).transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        mirrored.save(folder / path.name.replace(".jpg.chip.jpg", "1.jpg.chip.jpg"), quality=95)
    return folder


def add_bad_files(folder: Path) -> dict[str, str]:
    """A text file named .jpg, a truncated JPEG and a 0-byte file; returns name -> error kind."""
    (folder / "notes.jpg").write_text("not an image")
    good = next(p for p in sorted(folder.iterdir()) if p.suffix == ".jpg" and p.stat().st_size > 1000).read_bytes()
    (folder / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (folder / "empty.jpg").write_bytes(b"")
    return {"notes.jpg": "not an image", "truncated.jpg": "corrupt", "empty.jpg": "empty"}


def random_unit_vectors(n, dim=512, seed=0):
    vectors = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
