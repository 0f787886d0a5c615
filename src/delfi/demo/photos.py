"""The demo's sample photographs: scikit-image's bundled files that its documentation marks public
domain or CC0, read from the installed package (no network).

Each entry quotes the licence sentence of the image's docstring in ``skimage/data/_fetchers.py``
(scikit-image 0.26); `tests/demo` checks that every sentence is still in the installed package's
docstring and that every file is there. Only images whose docstring says CC0 or public domain are
listed (``coins``, ``immunohistochemistry`` etc., "no known copyright restrictions", are not).

``scene`` photos are the objects to find (several synthetic views of each go into the database);
``distractor`` photos are database images that are none of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["SamplePhoto", "PHOTOS", "MissingSkimageError", "data_dir", "photo_path", "load_photo", "scenes",
           "distractors"]

INSTALL_HINT = 'the demo photos come from scikit-image: pip install "delfi[demo]" (or pip install scikit-image)'


class MissingSkimageError(ImportError):
    """scikit-image is not installed (the message says how to install it)."""


@dataclass(frozen=True)
class SamplePhoto:
    name: str  # the skimage.data function
    filename: str  # under skimage/data/
    licence: str  # "CC0" or "public domain"
    licence_text: str  # the sentence of the skimage.data docstring, verbatim
    role: str  # "scene" or "distractor"


PHOTOS: tuple[SamplePhoto, ...] = (
    # name, file, licence, licence sentence in skimage/data/_fetchers.py, role
    SamplePhoto("astronaut", "astronaut.png", "public domain",
                "No known copyright restrictions, released into the public domain.", "scene"),
    SamplePhoto("camera", "camera.png", "CC0",
                "No copyright restrictions. CC0 by the photographer (Lav Varshney).", "scene"),
    SamplePhoto("chelsea", "chelsea.png", "CC0",
                "No copyright restrictions.  CC0 by the photographer (Stefan van der Walt).", "scene"),
    SamplePhoto("coffee", "coffee.png", "CC0",
                "No copyright restrictions.  CC0 by the photographer (Rachel Michetti).", "scene"),
    SamplePhoto("rocket", "rocket.jpg", "public domain",
                "The image was captured by SpaceX and `released in the public domain", "scene"),
    SamplePhoto("hubble_deep_field", "hubble_deep_field.jpg", "public domain",
                "The image was captured by NASA and `may be freely used in the public domain", "scene"),
    SamplePhoto("brick", "brick.png", "CC0", "licensed\nunder the Creative Commons CC0 License.", "distractor"),
    SamplePhoto("grass", "grass.png", "CC0", "and licensed under the Creative Commons CC0 License.", "distractor"),
    SamplePhoto("gravel", "gravel.png", "CC0", "licensed under the Creative Commons CC0 License.", "distractor"),
    SamplePhoto("text", "text.png", "public domain",
                "No known copyright restrictions, released into the public domain.", "distractor"),
    SamplePhoto("retina", "retina.jpg", "CC0",
                "This file is made available under the Creative Commons CC0 1.0 Universal\nPublic Domain Dedication.",
                "distractor"),
    SamplePhoto("clock", "clock_motion.png", "public domain",
                "Released into the public domain by the photographer (Stefan van der Walt).", "distractor"),
)


def scenes() -> list[SamplePhoto]:
    return [p for p in PHOTOS if p.role == "scene"]


def distractors() -> list[SamplePhoto]:
    return [p for p in PHOTOS if p.role == "distractor"]


def data_dir() -> Path:
    """The installed ``skimage/data`` folder (MissingSkimageError when scikit-image is missing)."""
    try:
        import skimage
    except ImportError as exc:
        raise MissingSkimageError(f"{INSTALL_HINT} ({exc})") from None
    return Path(skimage.__file__).resolve().parent / "data"


def photo_path(photo: SamplePhoto) -> Path:
    """Where ``photo`` is in the installed package (FileNotFoundError naming it when absent)."""
    path = data_dir() / photo.filename
    if not path.is_file():
        raise FileNotFoundError(f"{path}: this scikit-image install lacks the sample photo {photo.name!r}; "
                                "reinstall scikit-image (the demo never downloads)")
    return path


def load_photo(photo: SamplePhoto, longest_side: int | None = None) -> np.ndarray:
    """``photo`` as (H, W, 3) uint8 RGB, resized (Lanczos) so that its longest side is ``longest_side``."""
    from PIL import Image

    with Image.open(photo_path(photo)) as image:
        image = image.convert("RGB")
        if longest_side is not None:
            scale = longest_side / max(image.size)
            size = (max(1, round(image.size[0] * scale)), max(1, round(image.size[1] * scale)))
            image = image.resize(size, Image.Resampling.LANCZOS)
        return np.asarray(image, dtype=np.uint8).copy()
