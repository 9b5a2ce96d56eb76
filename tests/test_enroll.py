from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeface.storage.enroll import (
    Enroller,
    EnrollmentError,
    Reason,
    image_files,
    person_folders,
    prepare_requests,
)
from edgeface.storage.gallery import Gallery, InvalidNameError

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PEOPLE = DATA / "people"
needs_data = pytest.mark.skipif(not PEOPLE.is_dir(), reason="../shared/data is absent")


# -- requests (no model needed) --------------------------------------------------------------


def _photo(path: Path) -> Path:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((8, 8, 3), 128, np.uint8))
    return path


def test_folders_are_searched_recursively_and_hidden_files_skipped(tmp_path: Path) -> None:
    a = _photo(tmp_path / "p" / "a.jpg")
    b = _photo(tmp_path / "p" / "holiday" / "2019" / "b.PNG")
    _photo(tmp_path / "p" / ".thumbs" / "c.jpg")
    (tmp_path / "p" / "notes.txt").write_text("not a photo")
    assert image_files(tmp_path / "p") == [a, b]


@pytest.mark.parametrize(("requests", "error", "words"), [
    ([("a/b", ["p"])], InvalidNameError, "path separator"),
    ([("Zoë\x07", ["p"])], InvalidNameError, "control character"),
    ([("Ada", ["p"]), ("Ada", ["p"])], EnrollmentError, "requested twice"),
    ([("Ada", ["empty"])], EnrollmentError, "holds no photos"),
    ([("Ada", ["missing.jpg"])], EnrollmentError, "no such file"),
    ([("Ada", [])], EnrollmentError, "no photos given"),
    ([("Bob", ["p"])], EnrollmentError, "already enrolled.*--add"),
])
def test_bad_requests_fail_before_anything_happens(tmp_path: Path, requests, error, words) -> None:
    _photo(tmp_path / "p" / "a.jpg")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    requests = [(name, [tmp_path / p for p in paths]) for name, paths in requests]
    with pytest.raises(error, match=words) as info:
        prepare_requests(requests, {"Bob": 2})
    assert "\n" not in str(info.value)


def test_existing_name_is_accepted_with_add(tmp_path: Path) -> None:
    photo = _photo(tmp_path / "a.jpg")
    assert prepare_requests([("Bob", [photo, photo])], {"Bob": 2}, add=True) == [("Bob", [photo])]


def test_person_folders_skip_underscore_folders(tmp_path: Path) -> None:
    for name in ("Zoë", "_group", ".git", "bob"):
        (tmp_path / name).mkdir()
    (tmp_path / "loose.jpg").write_bytes(b"")
    people, skipped = person_folders(tmp_path)
    assert [n for n, _ in people] == ["Zoë", "bob"] and [p.name for p in skipped] == [".git", "_group"]
    with pytest.raises(EnrollmentError, match="no sub-folders"):
        person_folders(tmp_path / "bob")


# -- real photos -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def analyzer():
    if not PEOPLE.is_dir():
        pytest.skip("../shared/data is absent")
    from edgeface.config import Config
    from edgeface.vision.analyzer import FaceAnalyzer

    return FaceAnalyzer.from_config(Config().recognition)


@pytest.fixture()
def gallery(tmp_path: Path):
    with Gallery(tmp_path / "g.db") as g:
        yield g


def _reasons(plan) -> dict[str, Reason | None]:
    return {f"{o.path.parent.name}/{o.path.name}": o.reason for o in plan.outcomes}


def _enroll_people(enroller: Enroller) -> dict[str, object]:
    people, _ = person_folders(PEOPLE)
    return {name: enroller.enroll(name, files) for name, files in prepare_requests([(n, [f]) for n, f in people], {})}


def test_people_folders_enroll_with_a_reason_for_each_photo(analyzer, gallery: Gallery) -> None:
    plans = _enroll_people(Enroller(analyzer, gallery))
    assert _reasons(plans["barack_obama"]) == {"barack_obama/1.jpg": None, "barack_obama/2.jpg": None,
                                               "barack_obama/3.jpg": Reason.DUPLICATE}  # 3.jpg is a copy of 2.jpg
    assert "same file as" in plans["barack_obama"].outcomes[2].detail
    assert [(i.name, i.template_count) for i in gallery.list_identities()] == [
        ("alex_lacamoire", 2), ("barack_obama", 2), ("joe_biden", 2), ("lin_manuel_miranda", 1)]
    hashes = [t.source_sha256 for t in gallery.show("joe_biden").templates]
    assert all(h and len(h) == 64 for h in hashes)
    assert all(0 < t.quality <= 1 for t in gallery.show("joe_biden").templates)


def test_group_photos_are_rejected_for_the_right_reasons(analyzer, gallery: Gallery) -> None:
    enroller = Enroller(analyzer, gallery)
    _enroll_people(enroller)
    plan = enroller.enroll("someone", sorted((PEOPLE / "_group").iterdir()))
    reasons = _reasons(plan)
    assert reasons == {
        "_group/obama-1080p.jpg": reasons["_group/obama-1080p.jpg"],
        # a 63 px face of Obama, the same picture as obama-1080p: a duplicate of it when that one was enrolled,
        # else enrolled with a warning that it resembles barack_obama (below)
        "_group/obama-240p.jpg": reasons["_group/obama-240p.jpg"],
        "_group/obama_and_biden.jpg": Reason.SEVERAL_FACES,  # both found (short range alone missed Biden)
        "_group/two_people.jpg": Reason.SEVERAL_FACES,
    }
    # the same picture as barack_obama/1.jpg, larger: 0.08-0.104 away depending on the alignment method,
    # so a duplicate, or else a photo that resembles him (enrolled, with a warning)
    first = plan.outcomes[0]
    assert first.reason is Reason.DUPLICATE or (first.accepted and first.warning is not None)
    assert "barack_obama" in (first.detail if first.reason else first.warning)
    small = plan.outcomes[1]
    # the same picture again, smaller: a duplicate of a stored photo of him or of obama-1080p, or else
    # enrolled with a warning that it resembles him
    assert small.reason is Reason.DUPLICATE or (small.accepted and "barack_obama" in (small.warning or ""))
    assert ("someone" in [i.name for i in gallery.list_identities()]) == (first.accepted or small.accepted)


def test_largest_face_is_taken_only_when_it_dominates(analyzer, gallery: Gallery, tmp_path: Path) -> None:
    import cv2

    from edgeface.io.images import read_image

    joe = read_image(PEOPLE / "joe_biden" / "2.jpg")
    obama_face = read_image(PEOPLE / "barack_obama" / "1.jpg")[92:467, 297:674]
    joe[880:1180, 880:1180] = cv2.resize(obama_face, (300, 300))
    cv2.imwrite(str(tmp_path / "joe_and_small_obama.png"), joe)
    found = analyzer.analyze(joe).detections
    assert len(found) == 2 and found.score.min() > 0.7  # a confident second face, 2.4 times smaller
    side_by_side = read_image(PEOPLE / "_group" / "two_people.jpg")
    cv2.imwrite(str(tmp_path / "two_people.png"), side_by_side)
    plan = Enroller(analyzer, gallery).enroll("joe", [tmp_path / "joe_and_small_obama.png", tmp_path / "two_people.png"])
    assert plan.outcomes[0].accepted
    assert plan.outcomes[1].reason is Reason.SEVERAL_FACES
    alone = analyzer.analyze(read_image(PEOPLE / "joe_biden" / "2.jpg")).embeddings[0]
    assert np.linalg.norm(plan.outcomes[0].embedding - alone) < 0.1


def test_degraded_photos_are_rejected(analyzer, gallery: Gallery, tmp_path: Path) -> None:
    import cv2

    from edgeface.io.images import read_image

    joe = read_image(PEOPLE / "joe_biden" / "2.jpg")
    h, w = joe.shape[:2]
    cases = {
        "blurred.jpg": (cv2.GaussianBlur(joe, (0, 0), 8), Reason.BLURRED),
        "tilted.jpg": (cv2.warpAffine(joe, cv2.getRotationMatrix2D((w / 2, h / 2), 40, 1.0), (w, h)), Reason.EXTREME_POSE),
        "tiny.jpg": (cv2.resize(joe, (120, 120), interpolation=cv2.INTER_AREA), Reason.TOO_SMALL),
        "no_face.jpg": (joe[900:], Reason.NO_FACE),
    }
    for name, (image, _) in cases.items():
        cv2.imwrite(str(tmp_path / name), image)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    plan = Enroller(analyzer, gallery).enroll("joe", [tmp_path / n for n in cases] + [tmp_path / "broken.jpg"])
    assert [o.reason for o in plan.outcomes] == [r for _, r in cases.values()] + [Reason.UNREADABLE]
    assert all(o.detail and "\n" not in o.detail for o in plan.outcomes)
    assert gallery.list_identities() == []  # no usable photo: nothing written


def test_a_resized_recompressed_copy_is_a_duplicate(analyzer, gallery: Gallery, tmp_path: Path) -> None:
    import cv2

    from edgeface.io.images import read_image

    joe = read_image(PEOPLE / "joe_biden" / "2.jpg")
    cv2.imwrite(str(tmp_path / "copy.jpg"), cv2.resize(joe, (600, 600), interpolation=cv2.INTER_AREA),
                [cv2.IMWRITE_JPEG_QUALITY, 80])
    enroller = Enroller(analyzer, gallery)
    enroller.enroll("joe_biden", [PEOPLE / "joe_biden" / "2.jpg"])
    plan = enroller.enroll("joe_biden", [tmp_path / "copy.jpg", PEOPLE / "joe_biden" / "2.jpg", PEOPLE / "joe_biden" / "1.jpg"])
    assert [o.reason for o in plan.outcomes] == [Reason.DUPLICATE, Reason.DUPLICATE, None]
    assert "nearly identical" in plan.outcomes[0].detail and "joe_biden" in plan.outcomes[0].detail
    assert "already enrolled for joe_biden" in plan.outcomes[1].detail
    assert gallery.show("joe_biden").template_count == 2


def test_photo_resembling_another_person_is_enrolled_with_a_warning(analyzer, gallery: Gallery, tmp_path: Path) -> None:
    """Obama's half of two_people.jpg under a new name: as far as the photos tell, a relative of
    barack_obama. Enrolled, and the warning names him with the distance."""
    import cv2

    from edgeface.io.images import read_image

    enroller = Enroller(analyzer, gallery)
    _enroll_people(enroller)
    cv2.imwrite(str(tmp_path / "obama_half.jpg"), read_image(PEOPLE / "_group" / "two_people.jpg")[:, :560])
    seen = []
    new_person = enroller.enroll("obamas_brother", [tmp_path / "obama_half.jpg"], seen.append)
    outcome = new_person.outcomes[0]
    assert outcome.accepted and seen == [outcome]
    assert outcome.warning is not None and outcome.warning.startswith("resembles barack_obama (0.")
    assert gallery.show("obamas_brother").template_count == 1


def test_photo_filed_under_the_wrong_name_is_refused(analyzer, gallery: Gallery, tmp_path: Path) -> None:
    """Obama's half of two_people.jpg added to joe_biden, who has two photos: far from both of them and
    near barack_obama's, so refused; in a batch with joe's own photo the same holds."""
    import cv2

    from edgeface.io.images import read_image

    enroller = Enroller(analyzer, gallery)
    _enroll_people(enroller)
    cv2.imwrite(str(tmp_path / "obama_half.jpg"), read_image(PEOPLE / "_group" / "two_people.jpg")[:, :560])
    added_to_joe = enroller.enroll("joe_biden", [tmp_path / "obama_half.jpg"])
    outcome = added_to_joe.outcomes[0]
    assert outcome.reason is Reason.CLOSER_TO_OTHER
    assert outcome.detail.startswith("looks like barack_obama (0.") and "unlike joe_biden's other photos" in outcome.detail
    assert "filed under the wrong name" in outcome.detail and "\n" not in outcome.detail
    assert gallery.show("joe_biden").template_count == 2
    gallery.remove("joe_biden")
    batch = enroller.enroll("joe_biden", [PEOPLE / "joe_biden" / "1.jpg", tmp_path / "obama_half.jpg"])
    assert [o.reason for o in batch.outcomes] == [None, Reason.CLOSER_TO_OTHER]
    assert gallery.show("joe_biden").template_count == 1


def test_greyscale_cast_enrolls_from_folders(analyzer, gallery: Gallery) -> None:
    people, skipped = person_folders(DATA / "bbt")
    assert [p.name for p in skipped] == ["_group"]
    enroller = Enroller(analyzer, gallery)
    plans = [enroller.enroll(name, files) for name, files in prepare_requests([(n, [f]) for n, f in people], {})]
    assert len(gallery.list_identities()) == 8
    assert sum(len(p.accepted) for p in plans) >= 36  # of 40 crops
    rejected = [o for p in plans for o in p.outcomes if not o.accepted]
    assert all(o.reason is not None and o.detail for o in rejected)
