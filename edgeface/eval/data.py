"""Every face of a folder-per-person dataset, analysed once and kept in an .npz, for the evaluations.

An evaluation needs one embedding per image: the labelled person's. Which face that is depends on
the dataset (LFW's deep-funneled images are centred on the person; in CelebA's whole-scene photos the
labelled person is the largest face), so the table keeps every face with its box and detector score,
and `FaceTable.pick` chooses. The same file format holds face_recognition's faces
(`tools/face_recognition_faces.py`), so both systems are scored by one protocol (`--faces FILE`).

File format (np.savez): files (n,) relative paths; sizes (n, 2) width, height; owner (m,) index into
files of each face; boxes (m, 4) x1, y1, x2, y2; vectors (m, 128); second_vectors (m, 128), the second
embedder's (SFace; NaN rows without one; absent in older files); key (the settings that made it);
seconds_per_image.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edgeface.errors import EdgefaceError
from edgeface.io.images import IMAGE_SUFFIXES
from edgeface.recognition.vectors import EMBEDDING_DIM

log = logging.getLogger(__name__)


FaceRule = Literal["largest", "central"]


def dataset_people(root: Path) -> dict[str, list[Path]]:
    """{person: sorted image paths} for a folder-per-person dataset; folders starting with '_'
    (group photos) are not people."""
    if not root.is_dir():
        raise EdgefaceError(f"{root} is not a folder (expected one sub-folder of images per person)")
    people = {
        d.name: sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        for d in sorted(root.iterdir())
        if d.is_dir() and not d.name.startswith(("_", "."))
    }
    people = {name: images for name, images in people.items() if images}
    if not people:
        raise EdgefaceError(f"{root} has no sub-folders with images")
    return people


PeoplePart = Literal["fit", "eval"]
PEOPLE_SPLIT_SEED = 14
"""The fixed seed of the people split: tools/measure_impostor_scores.py fits on one part, `edgeface eval
identify --people-split eval` measures on the other, so a figure is checked on people the fit never saw."""


def people_part(people: dict[str, list[Path]], part: PeoplePart) -> dict[str, list[Path]]:
    """Half of a dataset's people (people, never images, are split), drawn with PEOPLE_SPLIT_SEED: "fit"
    the first half of a fixed random order, "eval" the rest."""
    order = np.random.default_rng(PEOPLE_SPLIT_SEED).permutation(sorted(people))
    chosen = set(order[: len(order) // 2].tolist()) if part == "fit" else set(order[len(order) // 2:].tolist())
    return {name: images for name, images in people.items() if name in chosen}


def images_root(data: Path) -> Path:
    """A dataset folder given either as its root (with images/) or as the images folder itself."""
    return data / "images" if (data / "images").is_dir() else data


def default_face_rule(data: Path) -> FaceRule:
    """LFW (pre-aligned, the person in the centre): central; anything else: the largest face."""
    return "central" if "lfw" in images_root(data).resolve().as_posix().lower() else "largest"


@dataclass(frozen=True)
class FaceTable:
    files: list[str]
    sizes: np.ndarray
    owner: np.ndarray
    boxes: np.ndarray
    vectors: np.ndarray
    key: str
    seconds_per_image: float
    second_vectors: np.ndarray | None = None
    """(m, 128) the second embedder's (SFace) embeddings of the same faces; None: not computed."""

    def pick(self, rule: FaceRule, files: Sequence[str] | None = None, *, second: bool = False) -> np.ndarray:
        """(len(files), 128) unit embeddings of each image's chosen face (the second embedder's when
        `second`); a NaN row for an image without a face or not in the table."""
        vectors = self.vectors
        if second:
            if self.second_vectors is None:
                raise EdgefaceError("these faces have no second-opinion (SFace) embeddings")
            vectors = self.second_vectors
        wanted = self.files if files is None else list(files)
        index = {name: i for i, name in enumerate(self.files)}
        chosen = np.full(len(self.files), -1, np.int64)
        if len(self.owner):
            if rule == "largest":
                score = -((self.boxes[:, 2] - self.boxes[:, 0]) * (self.boxes[:, 3] - self.boxes[:, 1]))
            else:
                centres = (self.boxes[:, :2] + self.boxes[:, 2:]) / 2
                score = np.linalg.norm(centres - self.sizes[self.owner] / 2, axis=1)
            order = np.lexsort((score, self.owner))  # by owner, best face first
            first = np.ones(len(order), bool)
            first[1:] = self.owner[order][1:] != self.owner[order][:-1]
            chosen[self.owner[order][first]] = order[first]
        out = np.full((len(wanted), EMBEDDING_DIM), np.nan, np.float32)
        for row, name in enumerate(wanted):
            i = index.get(name, -1)
            if i >= 0 and chosen[i] >= 0:
                vector = vectors[chosen[i]].astype(np.float32)
                out[row] = vector / max(float(np.linalg.norm(vector)), 1e-12)
        return out

    def save(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp.npz")
        arrays: dict[str, Any] = {"files": np.array(self.files), "sizes": self.sizes, "owner": self.owner,
                                  "boxes": self.boxes, "vectors": self.vectors, "key": self.key,
                                  "seconds_per_image": self.seconds_per_image}
        if self.second_vectors is not None:
            arrays["second_vectors"] = self.second_vectors
        np.savez(tmp, **arrays)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> FaceTable:
        try:
            with np.load(path) as stored:
                return cls(stored["files"].tolist(), stored["sizes"].reshape(-1, 2).astype(np.float32),
                           stored["owner"].astype(np.int64), stored["boxes"].reshape(-1, 4).astype(np.float32),
                           stored["vectors"].reshape(-1, EMBEDDING_DIM).astype(np.float32), str(stored["key"]),
                           float(stored["seconds_per_image"]),
                           stored["second_vectors"].reshape(-1, EMBEDDING_DIM).astype(np.float32)
                           if "second_vectors" in stored.files else None)
        except (OSError, ValueError, KeyError) as error:
            raise EdgefaceError(f"cannot read faces file {path}: {error}") from None

    @classmethod
    def empty(cls, key: str, second: bool = False) -> FaceTable:
        return cls([], np.zeros((0, 2), np.float32), np.zeros(0, np.int64), np.zeros((0, 4), np.float32),
                   np.zeros((0, EMBEDDING_DIM), np.float32), key, 0.0,
                   np.zeros((0, EMBEDDING_DIM), np.float32) if second else None)


def analyse_files(root: Path, files: Sequence[str], make_analyzer: Callable[[], Any], *, key: str,
                  cache: Path | None = None, progress: bool = False, second: bool = False) -> FaceTable:
    """Every face of every file (relative to root), reusing and extending `cache` when it was made with
    the same key. An unreadable image counts as one without a face (and is logged)."""
    from edgeface.errors import ImageError
    from edgeface.io.images import read_image

    table = FaceTable.empty(key, second)
    if cache is not None and cache.is_file():
        stored = FaceTable.load(cache)
        if stored.key == key:
            table = stored
        else:
            log.warning("%s was made with other settings (%s); analysing again", cache, stored.key)
    known = set(table.files)
    missing = [f for f in dict.fromkeys(files) if f not in known]
    if not missing:
        return table
    analyzer = make_analyzer()
    iterator: Any = missing
    if progress:
        from tqdm import tqdm  # type: ignore[import-untyped]

        iterator = tqdm(missing, desc="analyse", unit="img", file=sys.stderr)
    sizes, owners, boxes, vectors = [], [], [], []
    seconds_vectors: list[np.ndarray] = []
    started = time.perf_counter()
    for i, name in enumerate(iterator, start=len(table.files)):
        try:
            image = read_image(root / name)
        except ImageError as error:
            log.warning("%s; counted as an image without a face", error)
            sizes.append((0.0, 0.0))
            continue
        faces = analyzer.analyze(image)
        sizes.append((float(image.shape[1]), float(image.shape[0])))
        owners += [i] * len(faces)
        boxes.append(faces.detections.xyxy.reshape(-1, 4))
        vectors.append(faces.embeddings.reshape(-1, EMBEDDING_DIM))
        found = faces.second_embeddings if faces.second_embeddings is not None else \
            np.full((len(faces), EMBEDDING_DIM), np.nan, np.float32)
        seconds_vectors.append(found.reshape(-1, EMBEDDING_DIM))
    seconds = (time.perf_counter() - started) / len(missing)
    done = len(table.files)
    table = FaceTable(
        table.files + list(missing),
        np.concatenate([table.sizes, np.array(sizes, np.float32).reshape(-1, 2)]),
        np.concatenate([table.owner, np.array(owners, np.int64)]),
        np.concatenate([table.boxes, *boxes]).astype(np.float32) if boxes else table.boxes,
        np.concatenate([table.vectors, *vectors]).astype(np.float32) if vectors else table.vectors,
        key,
        (table.seconds_per_image * done + seconds * len(missing)) / (done + len(missing)),
        None if table.second_vectors is None else
        np.concatenate([table.second_vectors, *seconds_vectors]).astype(np.float32) if seconds_vectors else table.second_vectors,
    )
    if cache is not None:
        table.save(cache)
    return table


def dataset_faces(data: Path, files: Sequence[str], *, faces_file: Path | None, make_analyzer: Callable[[], Any],
                  key: str, cache: Path | None, progress: bool, second: bool = False) -> FaceTable:
    """The faces of `files`: from a precomputed faces file (another system's, e.g. face_recognition's)
    when given, else analysed by edgeface (cached)."""
    if faces_file is not None:
        table = FaceTable.load(faces_file)
        absent = [f for f in files if f not in set(table.files)]
        if absent:
            raise EdgefaceError(f"{faces_file} lacks {len(absent)} of the {len(files)} images (e.g. {absent[0]})")
        return table
    return analyse_files(images_root(data), files, make_analyzer, key=key, cache=cache, progress=progress,
                         second=second)
