"""Look-alikes: what enrollment and matching do with people who resemble each other, on LFW and CelebA.

    python tools/measure_lookalikes.py --data ../shared/data --cache /tmp/lookalikes

Every photo is analysed once with the default pipeline (cached per data set in --cache): the labelled
face (LFW: nearest the centre; CelebA: the largest) is the probe; what `edgeface enroll` would take
from the photo (largest dominant face of enrollment quality, `Enroller.judge_faces`) is the template.
Printed, per data set:

1. genuine and impostor distance distributions (LFW: View 1 pairsDevTrain + pairsDevTest; CelebA:
   every same-person pair and 20,000 random different-person pairs), with the percentiles the
   enrollment thresholds (edgeface.storage.enroll) are read from;
2. bulk enrollment, one photo per person (LFW: every person with >= 2 photos, in folder order as
   `enroll --from-folders` does; CelebA: half the 100 people, seed 0): how many are refused as
   resembling someone, before (the old rule) and after (this rule); how many wrong-name photos (a
   photo of an enrolled person filed under another enrolled name) are still refused;
   and, adding one more photo to a person enrolled from one, how many right-name and wrong-name photos
   `check_resemblance` refuses for candidate values of wrong_name_min_distance;
3. matching on those galleries (the false-accept cost of enrolling everyone): the share of
   never-enrolled people's photos (LFW: people with one photo; CelebA: the other 50 people) and of
   the requested people's other photos that get a wrong name, before vs after; then, per margin, how
   often a named face has a runner-up within it and how often such a face is wrong (the choice of
   `pipeline.decision.runner_up_margin`), and simulated tracks (6 photos of one person voting) decided
   with the runner-up as a flag only or with 6 faces needed when it is close;
4. the nearest pairs of different people (look-alikes) among enrollable photos (tests/test_lookalikes.py).
Figures, not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from edgeface.eval.identify import dataset_people
from edgeface.recognition.vectors import EMBEDDING_DIM, pairwise_distances
from edgeface.storage.enroll import PhotoOutcome, Reason, check_resemblance
from edgeface.storage.gallery import DEFAULT_MATCH_MAX_DISTANCE, GallerySnapshot

NAN = np.full(EMBEDDING_DIM, np.nan, np.float32)


def analyse(root: Path, largest: bool, cache: Path) -> tuple[list[Path], list[str], np.ndarray, np.ndarray, list[str]]:
    """(files, person of each, probe vectors, enrollment vectors, enrollment verdicts) for a folder per
    person; NaN rows where there is no face / the photo is not enrollable."""
    people = dataset_people(root)
    files = [f for images in people.values() for f in images]
    owners = [f.parent.name for f in files]
    names = np.array([str(f) for f in files])
    if cache.is_file():
        stored = np.load(cache)
        if np.array_equal(stored["files"], names):
            return files, owners, stored["probes"], stored["templates"], [str(v) for v in stored["verdicts"]]
    from tqdm import tqdm  # type: ignore[import-untyped]

    from edgeface.config import Config
    from edgeface.eval.lfw import central_face
    from edgeface.io.images import read_image
    from edgeface.storage.enroll import Enroller
    from edgeface.storage.gallery import Gallery
    from edgeface.vision.analyzer import FaceAnalyzer

    analyzer = FaceAnalyzer.from_config(Config().recognition)
    probes, templates, verdicts = [], [], []
    with tempfile.TemporaryDirectory() as folder, Gallery(Path(folder) / "g.db") as gallery:
        enroller = Enroller(analyzer, gallery)
        for path in tqdm(files, desc=root.parent.name, unit="img", file=sys.stderr):
            image = read_image(path)
            faces = analyzer.analyze(image)
            if len(faces) == 0:
                index = None
            elif largest:
                index = int(np.argmax(faces.detections.area))
            else:
                index = central_face(faces.detections, image.shape[1], image.shape[0])
            probes.append(NAN if index is None else faces.embeddings[index])
            outcome = enroller.judge_faces(faces, path, path.parent.name)
            templates.append(outcome.vector if outcome.accepted else NAN)
            verdicts.append("enrollable" if outcome.accepted else outcome.reason.value)  # type: ignore[union-attr]
    with open(cache, "wb") as out:
        np.savez(out, files=names, probes=np.stack(probes), templates=np.stack(templates), verdicts=np.array(verdicts))
    return files, owners, np.stack(probes), np.stack(templates), verdicts


def lfw_view1_pairs(lfw: Path, files: list[Path]) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    index = {(f.parent.name, int(f.stem.rsplit("_", 1)[1])): i for i, f in enumerate(files)}
    same, different = [], []
    for name in ("pairsDevTrain.txt", "pairsDevTest.txt"):
        for line in (lfw / name).read_text().splitlines()[1:]:
            parts = line.split()
            if len(parts) == 3:
                same.append((index[(parts[0], int(parts[1]))], index[(parts[0], int(parts[2]))]))
            elif len(parts) == 4:
                different.append((index[(parts[0], int(parts[1]))], index[(parts[2], int(parts[3]))]))
    return same, different


def all_pairs(owners: list[str], impostors: int, rng: np.random.Generator) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    by_person: dict[str, list[int]] = {}
    for i, owner in enumerate(owners):
        by_person.setdefault(owner, []).append(i)
    same = [(a, b) for rows in by_person.values() for j, a in enumerate(rows) for b in rows[j + 1:]]
    different: list[tuple[int, int]] = []
    while len(different) < impostors:
        a, b = (int(x) for x in rng.integers(0, len(owners), 2))
        if owners[a] != owners[b]:
            different.append((a, b))
    return same, different


def pair_distances(vectors: np.ndarray, pairs: list[tuple[int, int]]) -> np.ndarray:
    a, b = np.array(pairs).T
    d = np.linalg.norm(vectors[a] - vectors[b], axis=1)
    return d[np.isfinite(d)]


def print_distributions(genuine: np.ndarray, impostor: np.ndarray) -> None:
    g = " ".join(f"p{q:g} {np.percentile(genuine, q):.3f}" for q in (50, 90, 95, 99, 99.5))
    i = " ".join(f"p{q:g} {np.percentile(impostor, q):.3f}" for q in (0.1, 1, 5, 50))
    print(f"  genuine ({len(genuine)} pairs): {g}, max {genuine.max():.3f}")
    print(f"  impostor ({len(impostor)} pairs): min {impostor.min():.3f}, {i}")
    for t in (0.45, 0.5, 0.55, 0.6):
        print(f"    distance {t}: genuine above {np.mean(genuine > t):.4f}, impostor below {np.mean(impostor < t):.4f}")


def old_check(name: str, outcomes: list[PhotoOutcome], snapshot: GallerySnapshot, match_max_distance: float) -> list[PhotoOutcome]:
    """The rule before issue 12: refused when nearer a different person (below the threshold) than to
    NAME's templates and other photos, and always when NAME had no other photo."""
    accepted = [o for o in outcomes if o.accepted]
    if not accepted or not len(snapshot):
        return outcomes
    probes = np.stack([o.vector for o in accepted])
    by_identity = snapshot.distances(probes, "min")
    to_self = np.full(len(accepted), np.inf, np.float32)
    if len(accepted) > 1:
        among = pairwise_distances(probes, probes)
        np.fill_diagonal(among, np.inf)
        to_self = among.min(axis=1)
    out = {}
    for i, o in enumerate(accepted):
        k = int(np.argmin(by_identity[i]))
        if by_identity[i, k] < match_max_distance and by_identity[i, k] <= to_self[i]:
            out[id(o)] = PhotoOutcome(o.path, name, Reason.CLOSER_TO_OTHER, "", sha256=o.sha256)
    return [out.get(id(o), o) for o in outcomes]


def bulk_enroll(requests: list[tuple[str, list[int]]], templates: np.ndarray, rule: str,
                threshold: float) -> tuple[dict[str, list[int]], int, int]:
    """Enroll each (person, template rows) in order, as `enroll --from-folders` does; returns
    (person -> enrolled rows, people refused entirely, photos refused as resembling someone)."""
    enrolled: dict[str, list[int]] = {}
    rows: list[tuple[str, int, np.ndarray]] = []
    snapshot = GallerySnapshot.build([], [])
    people_refused = photos_refused = 0
    for person, chosen in requests:
        outcomes = [PhotoOutcome(Path(str(r)), person, None, "", embedding=templates[r]) for r in chosen]
        if rule == "old":
            judged = old_check(person, outcomes, snapshot, threshold)
        else:
            judged = check_resemblance(person, outcomes, snapshot, threshold)
        kept = [int(str(o.path)) for o in judged if o.accepted]
        photos_refused += len(outcomes) - len(kept)
        if not kept:
            people_refused += 1
            continue
        enrolled[person] = kept
        rows += [(person, r, templates[r]) for r in kept]
        snapshot = GallerySnapshot.build(rows, [])
    return enrolled, people_refused, photos_refused


def wrong_names(snapshot: GallerySnapshot, probes: np.ndarray, owners: list[str], threshold: float,
                margin: float) -> tuple[int, int, int, int]:
    """(probes with a face, wrong names, right names, wrong names with a close runner-up)."""
    found = ~np.isnan(probes).any(axis=1)
    matches = snapshot.match(probes[found], threshold, "mean")
    who = [o for o, f in zip(owners, found) if f]
    wrong = [m for m, o in zip(matches, who) if m.name is not None and m.name != o]
    right = sum(m.name == o for m, o in zip(matches, who))
    return len(matches), len(wrong), right, sum(m.close_runner_up(margin) for m in wrong)


def study(name: str, files: list[Path], owners: list[str], probes: np.ndarray, templates: np.ndarray,
          rng: np.random.Generator, threshold: float) -> None:
    by_person: dict[str, list[int]] = {}
    for i, owner in enumerate(owners):
        by_person.setdefault(owner, []).append(i)
    enrollable = {p: [r for r in rows if np.isfinite(templates[r]).all()] for p, rows in by_person.items()}
    if name == "lfw":
        chosen = [p for p, rows in by_person.items() if len(rows) >= 2]
    else:
        chosen = sorted(rng.choice(sorted(by_person), size=len(by_person) // 2, replace=False).tolist())
    strangers = [p for p in by_person if p not in set(chosen)]
    one = [(p, enrollable[p][:1]) for p in chosen if enrollable[p]]
    every = [(p, enrollable[p]) for p in chosen if enrollable[p]]
    print(f"2. bulk enrollment of {len(chosen)} people ({len(one)} with an enrollable photo), "
          f"{len(strangers)} never enrolled")
    galleries = {}
    for label, requests in (("one photo each", one), ("all their photos", every)):
        for rule in ("old", "new"):
            enrolled, people_refused, photos_refused = bulk_enroll(requests, templates, rule, threshold)
            galleries[(label, rule)] = enrolled
            print(f"  {label}, {rule} rule: {people_refused} of {len(requests)} people refused "
                  f"({people_refused / len(requests):.1%}), {photos_refused} photos refused as resembling someone")
    enrolled = galleries[("one photo each", "new")]
    snapshot = GallerySnapshot.build([(p, r, templates[r]) for p, rows in enrolled.items() for r in rows], [])
    print("  adding a photo to a person enrolled from one photo (check_resemblance, as `enroll --add` does):")
    people = sorted(enrolled)
    right_name = [(p, r) for p in people for r in enrollable[p] if r not in enrolled[p]]
    random_name = [(people[int(j)], r) for (p, r), j in zip(right_name, rng.integers(0, len(people), len(right_name)))
                   if people[int(j)] != p]
    to_people = snapshot.distances(templates[[r for _, r in right_name]], "min")
    index = {p: k for k, p in enumerate(snapshot.names)}
    nearest_name = []
    for (p, r), row in zip(right_name, to_people):
        row = row.copy()
        row[index[p]] = np.inf
        nearest_name.append((snapshot.names[int(np.argmin(row))], r))
    for limit in (0.45, 0.5, 0.55, 0.6):
        refused = []
        for cases in (right_name, random_name, nearest_name):
            refused.append(np.mean([not check_resemblance(p, [PhotoOutcome(Path("x"), p, None, "", embedding=templates[r])],
                                                          snapshot, threshold, limit)[0].accepted for p, r in cases]))
        print(f"    wrong_name_min_distance {limit}: refused {refused[0]:.2%} of {len(right_name)} right-name photos, "
              f"{refused[1]:.1%} of {len(random_name)} filed under a random other name, {refused[2]:.1%} under "
              f"the most similar other name")
    print(f"3. matching (threshold {threshold}, mean strategy): wrong names given")
    stranger_rows = [r for p in strangers for r in by_person[p]]
    for label in ("one photo each", "all their photos"):
        for rule in ("old", "new"):
            enrolled = galleries[(label, rule)]
            snapshot = GallerySnapshot.build([(p, r, templates[r]) for p, rows in enrolled.items() for r in rows], [])
            other_rows = [r for p in chosen for r in by_person[p] if r not in set(enrolled.get(p, []))]
            n, wrong, _, _ = wrong_names(snapshot, probes[stranger_rows], [owners[r] for r in stranger_rows], threshold, 0)
            m, wrong_e, right_e, _ = wrong_names(snapshot, probes[other_rows], [owners[r] for r in other_rows], threshold, 0)
            print(f"  {label}, {rule} rule ({len(enrolled)} enrolled): never-enrolled photos named {wrong / n:.2%} "
                  f"of {n}; requested people's other photos: wrong name {wrong_e / m:.2%}, right {right_e / m:.1%} of {m}")
    enrolled = galleries[("one photo each", "new")]
    snapshot = GallerySnapshot.build([(p, r, templates[r]) for p, rows in enrolled.items() for r in rows], [])
    other_rows = [r for p in chosen for r in by_person[p] if r not in set(enrolled.get(p, []))]
    rows = other_rows + stranger_rows
    found = [r for r in rows if np.isfinite(probes[r]).all()]
    matches = snapshot.match(probes[found], threshold, "mean")
    named = [(m, owners[r]) for m, r in zip(matches, found) if m.name is not None]
    print(f"  runner-up within a margin, among the {len(named)} named probes of the new one-photo gallery:")
    for margin in (0.02, 0.04, 0.06, 0.08):
        close = [(m, o) for m, o in named if m.close_runner_up(margin)]
        far = [(m, o) for m, o in named if not m.close_runner_up(margin)]
        rate = lambda group: np.mean([m.name != o for m, o in group]) if group else float("nan")  # noqa: E731
        right_runner = np.mean([m.runner_up == o for m, o in close if m.name != o]) if close else float("nan")
        print(f"    margin {margin}: {len(close) / len(named):.1%} flagged; wrong-name rate {rate(close):.1%} flagged "
              f"vs {rate(far):.1%} not; flagged wrong names whose runner-up was right: {right_runner:.0%}; "
              f"share of all wrong names flagged {sum(m.name != o for m, o in close) / max(1, sum(m.name != o for m, o in named)):.0%}")
    print("  the same, enrolled people's other photos only (margin 0.04):")
    enrolled_named = [(m, o) for m, o in named if o in enrolled]
    for flagged in (True, False):
        group = [(m, o) for m, o in enrolled_named if m.close_runner_up(0.04) == flagged]
        print(f"    {'flagged' if flagged else 'not flagged'}: {len(group)}, wrong {np.mean([m.name != o for m, o in group]):.1%}, "
              f"runner-up right {np.mean([m.runner_up == o for m, o in group]):.1%}")
    tracks(snapshot, probes, owners, by_person, enrolled, strangers, threshold, rng)
    print("4. nearest different people (one enrollable photo each):")
    heads = [(p, rows[0]) for p, rows in enrollable.items() if len(rows) >= 3]
    vectors = templates[[r for _, r in heads]]
    d = pairwise_distances(vectors, vectors)
    np.fill_diagonal(d, np.inf)
    flat = np.argsort(d, axis=None)[: 2 * 8: 2]
    for a, b in zip(*np.unravel_index(flat, d.shape)):
        (pa, ra), (pb, rb) = heads[a], heads[b]
        print(f"  {d[a, b]:.3f}  {files[ra].relative_to(files[ra].parents[1])}  {files[rb].relative_to(files[rb].parents[1])}"
              f"  ({len(by_person[pa])} and {len(by_person[pb])} photos)")


def tracks(snapshot: GallerySnapshot, probes: np.ndarray, owners: list[str], by_person: dict[str, list[int]],
           enrolled: dict[str, list[int]], strangers: list[str], threshold: float, rng: np.random.Generator) -> None:
    """Tracks simulated from photos: 6 random photos of one person (an enrolled person's other photos,
    or a never-enrolled person's) vote as a track's faces do (`edgeface.recognition.decider.vote`, weight 1). Photos
    are more varied than a video's frames, so extra votes help here at least as much as on a camera."""
    from edgeface.recognition.decider import DecisionPolicy, Vote, vote

    policy = DecisionPolicy()
    cases = [(p, True) for p in enrolled] + [(p, False) for p in strangers]
    flagged: list[tuple[str | None, str, bool]] = []
    results: dict[str, list[tuple[str | None, str, bool]]] = {"flag only": [], "6 faces when flagged": []}
    for person, known in cases:
        rows = [r for r in by_person[person] if r not in set(enrolled.get(person, [])) and np.isfinite(probes[r]).all()]
        if len(rows) < 6:
            continue
        for _ in range(3):
            chosen = rng.choice(rows, size=6, replace=False)
            matches = snapshot.match(probes[chosen], threshold, "mean")
            votes = [Vote(probes[r], 1.0, m.name, m.distance, j, None, m.runner_up, m.runner_up_distance)
                     for j, (r, m) in enumerate(zip(chosen, matches))]
            first = vote(votes[:3], policy)
            first = first if first.decision is not None else vote(votes, policy, final=True)
            results["flag only"].append((first.decision, person, known))
            if first.runner_up is not None:
                flagged.append((first.decision, person, known))
                first = vote(votes, policy, final=True)
            results["6 faces when flagged"].append((first.decision, person, known))
    def share(values: list[bool]) -> str:
        return f"{np.mean(values):.1%} of {len(values)}" if values else "n/a (none)"

    print(f"  tracks of 6 photos, decided on the first 3 faces as a camera track is; {len(flagged)} decisions had a "
          f"close runner-up, {sum(d != p for d, p, _ in flagged)} of them wrong:")
    for label, outcomes in results.items():
        mine = [(d, p) for d, p, known in outcomes if known]
        theirs = [d for d, _, known in outcomes if not known]
        print(f"    {label}: enrolled people's tracks right {share([d == p for d, p in mine])}, "
              f"wrong name {share([d not in (p, 'unknown', None) for d, p in mine])}; "
              f"never-enrolled tracks named {share([d not in ('unknown', None) for d in theirs])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "edgeface-lookalikes")
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    threshold = DEFAULT_MATCH_MAX_DISTANCE
    for name, largest in (("lfw", False), ("celeba", True)):
        files, owners, probes, templates, verdicts = analyse(args.data / name / "images", largest, args.cache / f"{name}.npz")
        print(f"== {name}: {len(files)} photos, {int(np.isnan(probes).any(axis=1).sum())} without a face, "
              f"{sum(v != 'enrollable' for v in verdicts)} not enrollable")
        rng = np.random.default_rng(0)
        same, different = lfw_view1_pairs(args.data / name, files) if name == "lfw" else all_pairs(owners, 20_000, rng)
        print("1. distances between labelled faces" + (" (View 1 pairs)" if name == "lfw" else ""))
        print_distributions(pair_distances(probes, same), pair_distances(probes, different))
        study(name, files, owners, probes, templates, rng, threshold)


if __name__ == "__main__":
    main()
