"""Enrollment: photos -> checked templates -> the gallery, one transaction per person.

Each person goes through two steps:
- `Enroller.examine(name, files)` reads and analyses every photo and decides, per photo, "enrolled"
  or a rejection with its reason (`Reason`); it writes nothing;
- `Enroller.commit(plan)` stores the accepted templates in ONE transaction, so a crash (even kill -9)
  leaves the person either fully enrolled or absent.

`prepare_requests` checks everything a user can get wrong before any photo is analysed (names, paths,
empty folders, names already enrolled, the same name twice): on a problem it raises EnrollmentError
and nothing is written. Checks per photo, in order: readable; a face (a detection below the enrollment
gate's min_score is no face); one face (the largest is taken when it clearly dominates); size, pose,
blur (`QualityGate.for_enrollment`); not a duplicate of a stored or earlier template; not filed under
the wrong name (`check_resemblance`: far from NAME's other photos and near someone else's). A photo
that only resembles another enrolled person (a parent, a sibling) is enrolled with a warning that
names them and the distance.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgeface.errors import EdgefaceError, ImageError
from edgeface.io.images import IMAGE_SUFFIXES
from edgeface.recognition.vectors import pairwise_distances
from edgeface.storage.gallery import Gallery, GallerySnapshot, SecondTemplate, validate_name
from edgeface.text import plural
from edgeface.vision.quality import QualityGate, QualityReason

if TYPE_CHECKING:
    from edgeface.vision.analyzer import AnalyzedFaces, FaceAnalyzer

log = logging.getLogger(__name__)


DOMINANT_FACE_AREA_RATIO = 2.25
"""With several faces, the largest is enrolled only when its box area is at least this many times the
next one's (its side 1.5 times longer): clearly the subject, not one of a group. Other detections
below the enrollment gate's min_score do not count: they are mostly false positives (joe_biden/2.jpg
rotated by 30-50 degrees gets a second "face" at score 0.52-0.56 on his shoulder)."""

DUPLICATE_MAX_DISTANCE = 0.1
"""A template this close to a stored one (or one earlier in the batch) is a duplicate: the same photo
again, resized or re-encoded (obama-1080p vs barack_obama/1.jpg of ../shared/data/people: 0.077).
Different photos of one person are farther: 300 LFW same-person pairs (pairsDevTrain) measured
0.156 at the minimum, 0.30 median."""

WRONG_NAME_MIN_DISTANCE = 0.5
"""A photo farther than this from every other photo of its person (and nearer someone else, within
the match threshold) is refused as filed under the wrong name. Measured (python
tools/measure_lookalikes.py, default pipeline of 2026-12): same-person distances exceed 0.5 for none
of the 1,600 LFW View 1 pairs (max 0.483) and for 4.0% of 10,242 CelebA pairs; adding a photo to a
person enrolled from one photo, 0.5 refuses 2 of 6,423 right-name photos on LFW and 0 of 564 on
CelebA, and 83% (LFW) / 66% (CelebA) of photos filed under a random other enrolled name. A photo filed
under the name of a look-alike is not caught: that is the same situation as a relative."""


class EnrollmentError(EdgefaceError):
    """The enrollment request is wrong (name, path, folder); nothing was written."""


class Reason(str, Enum):
    """Why a photo was not enrolled; the value is the name printed in reports."""

    UNREADABLE = "unreadable"
    NO_FACE = "no_face"
    SEVERAL_FACES = "several_faces"
    LOW_SCORE = "low_score"
    TOO_SMALL = "too_small"
    BLURRED = "blurred"
    EXTREME_POSE = "extreme_pose"
    DUPLICATE = "duplicate"
    CLOSER_TO_OTHER = "closer_to_other"


_QUALITY_REASONS = {
    QualityReason.LOW_SCORE: Reason.LOW_SCORE,
    QualityReason.TOO_SMALL: Reason.TOO_SMALL,
    QualityReason.BLURRED: Reason.BLURRED,
    QualityReason.EXTREME_YAW: Reason.EXTREME_POSE,
    QualityReason.EXTREME_ROLL: Reason.EXTREME_POSE,
}


@dataclass(frozen=True)
class PhotoOutcome:
    path: Path
    name: str
    reason: Reason | None
    """None: enrolled (or, before commit, accepted)."""
    detail: str
    quality: float | None = None
    sha256: str | None = None
    embedding: np.ndarray | None = field(default=None, repr=False, compare=False)
    warning: str | None = None
    """Set on an accepted photo that resembles another enrolled person: who, and how near."""
    second: SecondTemplate | None = field(default=None, repr=False, compare=False)
    """The second model's (SFace) embedding and chip of the face, stored with the template."""
    chip: np.ndarray | None = field(default=None, repr=False, compare=False)
    """The accepted face's aligned chip (the station page keeps it as the template's face crop)."""

    @property
    def accepted(self) -> bool:
        return self.reason is None

    @property
    def vector(self) -> np.ndarray:
        """The embedding of an accepted photo."""
        if self.embedding is None:
            raise ValueError(f"{self.path} was rejected and has no embedding")
        return self.embedding


@dataclass
class PersonPlan:
    name: str
    outcomes: list[PhotoOutcome]

    @property
    def accepted(self) -> list[PhotoOutcome]:
        return [o for o in self.outcomes if o.accepted]


# -- requests ------------------------------------------------------------------------------


def image_files(path: Path) -> list[Path]:
    """The photos a path stands for: itself when a file, else every image file below it (recursive,
    sorted, hidden entries skipped). EnrollmentError when it is missing or a folder without photos."""
    if path.is_file():
        return [path]
    try:
        path.stat()
    except OSError as error:  # a symbolic link loop is not "no such file"
        from edgeface.io.images import describe_os_error

        raise EnrollmentError(f"{describe_os_error(path, error).replace(': no such file', ': no such file or folder')}"
                              "; nothing was written") from None
    if not path.is_dir():
        raise EnrollmentError(f"{path}: not a file or folder; nothing was written")
    try:
        files = sorted(
            p for p in path.rglob("*")
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
    except OSError as error:
        raise EnrollmentError(f"{path}: cannot read the folder ({error.strerror or error}); nothing was written") from None
    if not files:
        raise EnrollmentError(f"{path}: folder holds no photos ({', '.join(sorted(IMAGE_SUFFIXES))}); nothing was written")
    return files


def person_folders(root: Path) -> tuple[list[tuple[str, Path]], list[Path]]:
    """([(folder name, folder)] one per person, [skipped folders]) for the sub-folders of root.
    Folders whose name starts with '.' or '_' (such as `_group`) are not people and are skipped."""
    if not root.is_dir():
        raise EnrollmentError(f"{root}: not a folder; --from-folders takes a folder with one sub-folder per person")
    children = sorted(child for child in root.iterdir() if child.is_dir())
    people = [(child.name, child) for child in children if child.name[:1] not in "._"]
    if not people:
        raise EnrollmentError(f"{root}: no sub-folders (one per person, named after them); nothing was written")
    return people, [child for child in children if child.name[:1] in "._"]


def prepare_requests(requests: Sequence[tuple[str, Sequence[Path]]], enrolled: Mapping[str, int],
                     add: bool = False) -> list[tuple[str, list[Path]]]:
    """Validate (name, paths) requests before anything is analysed or written: valid names, each
    name once, names in `enrolled` (name -> template count) only with `add`, every path a photo or a
    folder with photos. Returns (NFC name, photo files)."""
    prepared: list[tuple[str, list[Path]]] = []
    seen: set[str] = set()
    for raw_name, paths in requests:
        name = validate_name(raw_name)
        if name in seen:
            raise EnrollmentError(f"{name!r} is requested twice; give each person once; nothing was written")
        seen.add(name)
        if name in enrolled and not add:
            raise EnrollmentError(f"{name!r} is already enrolled ({plural(enrolled[name], 'template')}); pass --add to add "
                                  "photos to them, or choose another name; nothing was written")
        if not paths:
            raise EnrollmentError(f"no photos given for {name!r}; nothing was written")
        files = [f for p in paths for f in image_files(Path(p))]
        prepared.append((name, list(dict.fromkeys(files))))
    return prepared


# -- examine and commit ------------------------------------------------------------------


@dataclass(frozen=True)
class Photo:
    """A photo given as its file's bytes (an MQTT enroll command's image); `path` names it in reports."""

    path: Path
    data: bytes


def check_resemblance(name: str, outcomes: list[PhotoOutcome], snapshot: GallerySnapshot, match_max_distance: float,
                      wrong_name_min_distance: float = WRONG_NAME_MIN_DISTANCE) -> list[PhotoOutcome]:
    """The gallery checks of NAME's accepted photos against the other enrolled people.

    A photo that resembles someone else (nearer than match_max_distance) is enrolled with a warning
    naming them: families and look-alikes are enrollable, matching tells them apart. It is refused
    as filed under the wrong name only when NAME already has photos (stored, or others in this batch),
    this one is farther than wrong_name_min_distance from all of them, and it is within
    match_max_distance of someone else and nearer to them than to NAME."""
    accepted = [o for o in outcomes if o.accepted]
    if not accepted or not len(snapshot):
        return outcomes
    probes = np.stack([o.vector for o in accepted])
    by_identity = snapshot.distances(probes, "min")
    own = snapshot.names.index(name) if name in snapshot.names else None
    to_self = by_identity[:, own].copy() if own is not None else np.full(len(accepted), np.inf, np.float32)
    among = pairwise_distances(probes, probes)
    np.fill_diagonal(among, np.inf)
    if len(accepted) > 1:
        to_self = np.minimum(to_self, among.min(axis=1))
    if own is not None:
        by_identity[:, own] = np.inf
    judged: dict[int, PhotoOutcome] = {}
    for i, outcome in enumerate(accepted):
        k = int(np.argmin(by_identity[i]))
        other, mine = float(by_identity[i, k]), float(to_self[i])
        if not other < match_max_distance:
            continue
        if wrong_name_min_distance < mine < math.inf and other < mine:
            judged[id(outcome)] = PhotoOutcome(
                outcome.path, name, Reason.CLOSER_TO_OTHER,
                f"looks like {snapshot.names[k]} ({other:.3f}) and unlike {name}'s other photos ({mine:.3f} > "
                f"{wrong_name_min_distance}): filed under the wrong name?", sha256=outcome.sha256)
        else:
            versus = f", nearer than to {name}'s other photos ({mine:.3f})" if other < mine < math.inf else ""
            judged[id(outcome)] = replace(outcome, warning=f"resembles {snapshot.names[k]} ({other:.3f}){versus}")
    return [judged.get(id(o), o) for o in outcomes]


class Enroller:
    def __init__(
        self,
        analyzer: FaceAnalyzer,
        gallery: Gallery,
        gate: QualityGate | None = None,
        dominant_face_area_ratio: float = DOMINANT_FACE_AREA_RATIO,
        duplicate_max_distance: float = DUPLICATE_MAX_DISTANCE,
        wrong_name_min_distance: float = WRONG_NAME_MIN_DISTANCE,
        keep_chips: bool = True,
    ) -> None:
        """keep_chips: store each template's 112 px SFace chip (a face image, for `gallery upgrade`);
        the callers pass clusters.store_face_crops."""
        self.analyzer = analyzer
        self.keep_chips = keep_chips
        self.gallery = gallery
        self.gate = gate or QualityGate.for_enrollment()
        self.dominant_face_area_ratio = dominant_face_area_ratio
        self.duplicate_max_distance = duplicate_max_distance
        self.wrong_name_min_distance = wrong_name_min_distance

    def _face(self, photo: Path | Photo, name: str) -> PhotoOutcome:
        """Read (once), hash, decode (once), analyse and quality-check one photo: accepted with its
        embedding, or rejected."""
        from edgeface.io.images import decode_image, read_image_bytes

        path = photo.path if isinstance(photo, Photo) else photo
        try:
            data = photo.data if isinstance(photo, Photo) else read_image_bytes(path)
            image = decode_image(data, str(path))
        except (ImageError, OSError) as error:
            return PhotoOutcome(path, name, Reason.UNREADABLE, str(error).removeprefix(f"{path}: "))
        return self.judge_faces(self.analyzer.analyze(image), path, name, hashlib.sha256(data).hexdigest())

    def judge_faces(self, faces: AnalyzedFaces, path: Path, name: str, digest: str | None = None) -> PhotoOutcome:
        """The per-photo checks on an analysed photo: one dominant face of enrollment quality, with its
        embedding, or the reason it is refused (no gallery checks yet)."""
        if len(faces) == 0:
            return PhotoOutcome(path, name, Reason.NO_FACE, "no face found", sha256=digest)
        confident = faces.detections.score >= self.gate.min_score
        if not confident.any():
            # weak detections are mostly not faces (dogs.jpg of ../shared/data/detection: 0.60), or faces
            # too poor for a template; either way the photo has no face to enrol
            best = float(faces.detections.score.max())
            return PhotoOutcome(path, name, Reason.NO_FACE,
                                f"no clear face (the best candidate's detector score {best:.2f} is below the "
                                f"{self.gate.min_score:.2f} an enrollment photo needs)", sha256=digest)
        areas = faces.detections.area
        index = int(np.argmax(np.where(confident, areas, -1.0)))
        others = areas[confident & (np.arange(len(faces)) != index)]
        if len(others) and areas[index] < self.dominant_face_area_ratio * others.max():
            return PhotoOutcome(path, name, Reason.SEVERAL_FACES,
                                f"{len(others) + 1} faces of similar size; crop the photo to {name}", sha256=digest)
        result = self.gate.assess(faces.detections[index], faces.chips[index:index + 1])[0]
        m = result.measures
        if result.reason is not None:
            detail = {
                QualityReason.LOW_SCORE: f"detector score {m.score:.3f} below the minimum {self.gate.min_score:.2f}",
                QualityReason.TOO_SMALL: f"face {m.face_px:.1f} px < {self.gate.min_face_px:.0f} px",
                QualityReason.BLURRED: f"sharpness {m.blur_var:.2f} < {self.gate.blur_min_var:.1f}",
                QualityReason.EXTREME_YAW: f"head turned {abs(m.yaw_deg):.0f} deg > {self.gate.max_yaw_deg:.0f}",
                QualityReason.EXTREME_ROLL: f"head tilted {abs(m.roll_deg):.0f} deg > {self.gate.max_roll_deg:.0f}",
            }[result.reason]
            return PhotoOutcome(path, name, _QUALITY_REASONS[result.reason], detail, sha256=digest)
        return PhotoOutcome(path, name, None, "", result.weight, digest, faces.embeddings[index],
                            second=self._second_template(faces, index), chip=np.array(faces.chips[index]))

    def _second_template(self, faces: AnalyzedFaces, index: int) -> SecondTemplate | None:
        second = getattr(self.analyzer, "second", None)
        if second is None or faces.second_embeddings is None or faces.second_chips is None:
            return None
        return SecondTemplate(second.model_id, second.model_version, faces.second_embeddings[index],
                              faces.second_chips[index] if self.keep_chips else None)

    def examine(self, name: str, files: Sequence[Path | Photo],
                on_photo: Callable[[PhotoOutcome], None] | None = None) -> PersonPlan:
        """Decide every photo of one person; writes nothing. on_photo sees each rejection as it is
        found (acceptances are only final after the cross-checks at the end)."""
        name = validate_name(name)
        snapshot = self.gallery.snapshot()
        outcomes: list[PhotoOutcome] = []
        for photo in files:
            outcome = self._face(photo, name)
            path = outcome.path
            # only this photo's hash is looked up: the whole table per person made enrollment quadratic
            stored_hashes = self.gallery.source_hashes(among=[outcome.sha256]) if outcome.accepted and outcome.sha256 else {}
            if outcome.accepted and outcome.sha256 in stored_hashes:
                outcome = PhotoOutcome(path, name, Reason.DUPLICATE,
                                       f"this file is already enrolled for {stored_hashes[outcome.sha256]}", sha256=outcome.sha256)
            if outcome.accepted:
                earlier = next((o for o in outcomes if o.accepted and o.sha256 == outcome.sha256), None)
                if earlier is not None:
                    outcome = PhotoOutcome(path, name, Reason.DUPLICATE, f"same file as {earlier.path}", sha256=outcome.sha256)
            if outcome.accepted:
                outcome = self._check_near_duplicate(outcome, snapshot, outcomes)
            outcomes.append(outcome)
            if on_photo is not None and not outcome.accepted:
                on_photo(outcome)
        outcomes = self._check_others(name, outcomes, snapshot)
        if on_photo is not None:
            for outcome in outcomes:
                if outcome.accepted or outcome.reason is Reason.CLOSER_TO_OTHER:
                    on_photo(outcome)
        return PersonPlan(name, outcomes)

    def _check_near_duplicate(self, outcome: PhotoOutcome, snapshot: GallerySnapshot, outcomes: list[PhotoOutcome]) -> PhotoOutcome:
        vector = outcome.vector[None]
        if len(snapshot.templates):
            to_stored = pairwise_distances(vector, snapshot.templates)[0]
            j = int(np.argmin(to_stored))
            if to_stored[j] < self.duplicate_max_distance:
                owner = snapshot.names[int(np.searchsorted(snapshot.ends, j, side="right"))]
                return PhotoOutcome(outcome.path, outcome.name, Reason.DUPLICATE,
                                    f"nearly identical ({to_stored[j]:.3f}) to a template of {owner}", sha256=outcome.sha256)
        for earlier in outcomes:
            if earlier.accepted:
                distance = float(pairwise_distances(vector, earlier.vector[None])[0, 0])
                if distance < self.duplicate_max_distance:
                    return PhotoOutcome(outcome.path, outcome.name, Reason.DUPLICATE,
                                        f"nearly identical ({distance:.3f}) to {earlier.path}", sha256=outcome.sha256)
        return outcome

    def _check_others(self, name: str, outcomes: list[PhotoOutcome], snapshot: GallerySnapshot) -> list[PhotoOutcome]:
        return check_resemblance(name, outcomes, snapshot, self.gallery.match_max_distance, self.wrong_name_min_distance)

    def commit(self, plan: PersonPlan, metadata: dict | None = None) -> list[int]:
        """Store the plan's accepted templates in one transaction; [] (nothing written) when none."""
        accepted = plan.accepted
        if not accepted:
            return []
        return self.gallery.add_templates(plan.name, np.stack([o.vector for o in accepted]),
                                          [o.quality or 0.0 for o in accepted], [o.sha256 for o in accepted],
                                          metadata=metadata, second=[o.second for o in accepted])

    def enroll(self, name: str, files: Sequence[Path], on_photo: Callable[[PhotoOutcome], None] | None = None) -> PersonPlan:
        plan = self.examine(name, files, on_photo)
        self.commit(plan)
        return plan
