"""Real faces for the clustering tests: a few LFW people analysed by the real pipeline, once per
test session. Read from ../shared/data (never copied into the repository); tests skip without it."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
LFW = DATA / "lfw" / "images"

PEOPLE = ("Colin_Powell", "Gerhard_Schroeder", "Hugo_Chavez", "Jean_Chretien", "Serena_Williams", "Junichiro_Koizumi")
"""Returning people: the first IMAGES_PER_PERSON photos (by file name) of each."""
IMAGES_PER_PERSON = 8
DISTRACTORS = ("AJ_Lamas", "Aaron_Guiel", "Abdel_Aziz_Al-Hakim", "Abdul_Majeed_Shobokshi", "Adam_Rich", "Adrian_Fernandez")
"""People with a single LFW photo: strangers seen once."""


@dataclass(frozen=True)
class Face:
    person: str
    path: Path
    embedding: np.ndarray
    chip: np.ndarray


@functools.lru_cache(maxsize=1)
def lfw_faces() -> tuple[Face, ...]:
    """Every returning person's photos, then the distractors; the face nearest each image's centre."""
    from edgeface.config import Config
    from edgeface.eval.lfw import central_face
    from edgeface.io.images import read_image
    from edgeface.vision.analyzer import FaceAnalyzer

    analyzer = FaceAnalyzer.from_config(Config().recognition)
    faces = []
    for person in PEOPLE + DISTRACTORS:
        files = sorted((LFW / person).iterdir())[: IMAGES_PER_PERSON if person in PEOPLE else 1]
        for path in files:
            image = read_image(path)
            found = analyzer.analyze(image)
            index = central_face(found.detections, image.shape[1], image.shape[0])
            assert index is not None, f"no face in {path}"
            faces.append(Face(person, path, found.embeddings[index].copy(), found.chips[index].copy()))
    return tuple(faces)


def of(person: str) -> list[Face]:
    return [f for f in lfw_faces() if f.person == person]
