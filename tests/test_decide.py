from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from edgeface.events import parse_event
from edgeface.recognition.decider import (
    UNKNOWN,
    Decider,
    DecisionPolicy,
    Vote,
    aggregate_embedding,
    vote,
)

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)


def unit(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=128)
    return (v / np.linalg.norm(v)).astype(np.float32)


def v(name: str | None, weight: float = 1.0, frame: int = 0, seed: int = 0, distance: float = 0.3) -> Vote:
    return Vote(unit(seed), weight, name, distance if name else 0.5, frame)


def feed(decider: Decider, track_id: int, votes: list[Vote]) -> list:
    events = []
    for i, x in enumerate(votes):
        ts = T0 + timedelta(seconds=i)
        decider.seen(track_id, ts)
        events += decider.add_vote(track_id, x, ts)
    return events


def roundtrip(events: list) -> None:
    for e in events:
        assert parse_event(e.to_json()) == e


def test_a_clear_name_is_recognised_once_after_min_good_faces() -> None:
    decider = Decider("hall", "door", DecisionPolicy(min_good_faces=3))
    events = feed(decider, 7, [v("ada", frame=i) for i in range(2)])
    assert events == [] and decider.decision(7) is None
    events = feed(decider, 7, [v("ada", frame=2)])
    assert [e.type for e in events] == ["recognized"] and events[0].name == "ada" and events[0].faces_used == 3
    assert events[0].confidence == pytest.approx(1.0) and events[0].distance == pytest.approx(0.3)
    assert feed(decider, 7, [v("ada", frame=i) for i in range(3, 20)]) == []  # one per track, not per frame
    ended = decider.end_track(7, T0 + timedelta(seconds=30))
    assert [e.type for e in ended] == ["track_ended"] and ended[0].decision == "ada" and ended[0].faces_seen == 20
    roundtrip(events + ended)


def test_a_close_runner_up_is_named_on_the_event_and_does_not_change_the_decision() -> None:
    """Evan's faces match evan at 0.30; louis (his father) is the runner-up at 0.32 on two of three
    faces (within the 0.04 margin) and far on the third: the event names louis with the mean distance
    of those two faces. With louis 0.05 away or on one face only, the event says nothing."""

    def face(runner_up: str | None, runner_up_distance: float, frame: int) -> Vote:
        return Vote(unit(frame), 1.0, "evan", 0.30, frame, None, runner_up, runner_up_distance)

    decider = Decider("hall", "door")
    events = feed(decider, 1, [face("louis", 0.32, 0), face("louis", 0.33, 1), face("tom", 0.6, 2)])
    assert [(e.name, e.runner_up.name, e.runner_up.distance) for e in events] == [("evan", "louis", pytest.approx(0.325))]
    events += feed(decider, 2, [face("louis", 0.35, 0), face("louis", 0.36, 1), face("louis", 0.6, 2)])
    events += feed(decider, 3, [face("louis", 0.32, 0), face("tom", 0.6, 1), face(None, np.inf, 2)])
    assert [(e.name, e.runner_up) for e in events[1:]] == [("evan", None), ("evan", None)]
    roundtrip(events)


def test_quality_weights_decide_the_vote() -> None:
    policy = DecisionPolicy(min_good_faces=2, min_vote_share=0.6, max_runner_up_ratio=0.5)
    strong = [v("ada", 0.9), v("ada", 0.9), v("bob", 0.1), v("bob", 0.1)]
    assert vote(strong, policy).decision == "ada"
    flipped = [v("ada", 0.1), v("ada", 0.1), v("bob", 0.9), v("bob", 0.9)]
    assert vote(flipped, policy).decision == "bob"


def test_a_tie_is_unknown_never_a_coin_toss() -> None:
    policy = DecisionPolicy(min_good_faces=2)
    tie = [v("ada"), v("bob"), v("ada"), v("bob")]
    assert vote(tie, policy).decision is None  # not decided yet while the track lasts
    assert vote(tie, policy, final=True).decision == UNKNOWN


def test_weak_evidence_becomes_unknown_after_max_faces() -> None:
    policy = DecisionPolicy(min_good_faces=3, min_good_faces_unknown=6, max_faces_undecided=8, min_vote_share=0.6)
    weak = [v("ada") if i % 2 else v(None) for i in range(7)]  # ada 3/7, unknown 4/7: neither clear
    assert vote(weak, policy).decision is None
    assert vote(weak + [v("ada")], policy).decision == UNKNOWN


def test_unknown_needs_more_faces_than_a_name() -> None:
    policy = DecisionPolicy(min_good_faces=3, min_good_faces_unknown=6)
    assert vote([v(None)] * 5, policy).decision is None
    assert vote([v(None)] * 6, policy).decision == UNKNOWN


def test_unknown_track_goes_to_clustering_with_one_aggregated_embedding() -> None:
    """The decider hands each unknown track to the cluster stage (it never calls the clustering itself);
    the stage's answer is the track's cluster, in its label and its track_ended."""
    policy = DecisionPolicy(min_good_faces=2, min_good_faces_unknown=3, max_faces_undecided=4, unknown_best_faces=2)
    decider = Decider("hall", "door", policy, clustering=True)
    votes = [v(None, 0.9, seed=1), v(None, 0.2, seed=2), v(None, 0.8, seed=3)]
    events = feed(decider, 3, votes)
    assert [e.type for e in events] == ["unknown"] and events[0].cluster_id is None
    seen = decider.take_unknown_tracks()
    assert decider.take_unknown_tracks() == []
    assert len(seen) == 1 and seen[0].faces_used == 2 and seen[0].track_id == 3 and seen[0].camera == "door"
    expected = unit(1) + unit(3)  # the two best faces (weights 0.9 and 0.8), not the 0.2 one
    np.testing.assert_allclose(seen[0].embedding, expected / np.linalg.norm(expected), atol=1e-6)
    assert seen[0].quality == pytest.approx(0.85)
    decider.assign_cluster(3, "unknown-4")
    assert decider.cluster_of(3) == "unknown-4"
    ended = decider.end_track(3, T0 + timedelta(seconds=9))
    assert ended[-1].decision == UNKNOWN and ended[-1].cluster_id == "unknown-4"
    roundtrip(events + ended)


def test_an_unknown_track_carries_the_sface_chips_of_the_faces_it_averages_and_no_other_chip() -> None:
    """The exemplar's SFace embedding is made from the same best faces as its dlib embedding; a track
    keeps only the chips a decision can use (the best face's, the best faces' SFace chips)."""
    policy = DecisionPolicy(min_good_faces=2, min_good_faces_unknown=5, max_faces_undecided=6, unknown_best_faces=2)
    decider = Decider("hall", "door", policy, clustering=True)
    weights = [0.3, 0.9, 0.2, 0.8, 0.5]
    votes = [Vote(unit(i), w, None, 0.5, i, np.full((150, 150, 3), i, np.uint8), second_chip=np.full((112, 112, 3), i, np.uint8))
             for i, w in enumerate(weights)]
    for i, x in enumerate(votes[:-1]):
        decider.seen(7, T0 + timedelta(seconds=i))
        decider.add_vote(7, x, T0 + timedelta(seconds=i))
    kept = decider._tracks[7].votes
    assert [x.chip is not None for x in kept] == [False, True, False, False]
    assert [x.second_chip is not None for x in kept] == [False, True, False, True]
    feed(decider, 7, votes[-1:])
    [track] = decider.take_unknown_tracks()
    assert track.second_chips is not None and [int(c[0, 0, 0]) for c in track.second_chips] == [1, 3]
    assert track.chip is not None and int(track.chip[0, 0, 0]) == 1
    expected = unit(1) + unit(3)
    np.testing.assert_allclose(track.embedding, expected / np.linalg.norm(expected), atol=1e-6)


def chip_vote(name: str | None, weight: float, frame: int, rows: int = 4) -> Vote:
    """A vote whose chips are rows of stacked arrays, as the pipeline's are (the frame's chips in one array)."""
    chips, seconds = np.full((rows, 150, 150, 3), frame, np.uint8), np.full((rows, 112, 112, 3), frame, np.uint8)
    return Vote(unit(frame), weight, name, 0.3 if name else 0.5, frame, chips[1], second_chip=seconds[1])


def chips_held(decider: Decider, track_id: int) -> int:
    state = decider._tracks[track_id]
    return sum(x.base.nbytes if x.base is not None else x.nbytes for v in state.votes + state.rechecks
               for x in (v.chip, v.second_chip) if x is not None)


def test_chips_are_kept_as_own_copies_only_until_a_decision_needs_them() -> None:
    decider = Decider("hall", "door", DecisionPolicy(min_good_faces=3, recheck_window=2, unknown_best_faces=2),
                      clustering=True)
    feed(decider, 5, [chip_vote("ada", 0.5 + f / 100, f) for f in (0, 3)])
    assert chips_held(decider, 5) == 150 * 150 * 3 + 2 * 112 * 112 * 3  # one crop, two SFace chips, not their stacks
    assert [e.name for e in feed(decider, 5, [chip_vote("ada", 0.6, 6)])] == ["ada"]
    assert chips_held(decider, 5) == 0  # decided: the votes' chips are of no further use
    assert feed(decider, 5, [chip_vote(None, 0.7, 36), chip_vote(None, 0.9, 39)])[0].type == "unknown"
    [track] = decider.take_unknown_tracks()  # the switch to unknown used the re-checks' chips
    assert track.chip is not None and int(track.chip[0, 0, 0]) == 39
    assert track.second_chips is not None and [int(c[0, 0, 0]) for c in track.second_chips] == [39, 36]
    assert chips_held(decider, 5) == 0  # an unknown track cannot switch to unknown again
    assert feed(decider, 5, [chip_vote(None, 0.7, 69)]) == [] and chips_held(decider, 5) == 0


def test_without_clustering_no_chip_is_kept() -> None:
    decider = Decider("hall", "door", DecisionPolicy(min_good_faces=3))
    feed(decider, 5, [chip_vote("ada", 0.5, f) for f in (0, 3)])
    assert chips_held(decider, 5) == 0


def test_a_long_track_drops_its_weakest_vote_beyond_max_votes_kept() -> None:
    decider = Decider("hall", "door", DecisionPolicy(min_good_faces=3, max_votes_kept=32))
    feed(decider, 5, [v("ada", weight=1.0 - (f % 7) / 10, frame=f, seed=f) for f in range(40)])
    kept = decider._tracks[5].votes
    assert len(kept) == 32 and min(x.weight for x in kept) == pytest.approx(0.5)  # the five 0.4s and three 0.5s went
    assert decider.decision(5) == "ada"


def test_without_clustering_an_unknown_event_has_no_cluster() -> None:
    decider = Decider("hall", "door", DecisionPolicy(min_good_faces=1, min_good_faces_unknown=2, max_faces_undecided=2))
    events = feed(decider, 1, [v(None), v(None)])
    assert [e.type for e in events] == ["unknown"] and events[0].cluster_id is None


def test_aggregate_embedding_normalises_each_face_first() -> None:
    a, b = unit(1), unit(2)
    votes = [Vote(a * 10, 1.0, None, 0.5, 0), Vote(b, 1.0, None, 0.5, 1)]
    mean, quality, used = aggregate_embedding(votes, 5)
    np.testing.assert_allclose(mean, (a + b) / np.linalg.norm(a + b), atol=1e-6)
    assert used == 2 and quality == 1.0


def test_recheck_can_switch_the_person() -> None:
    decider = Decider("hall", "door", DecisionPolicy(min_good_faces=3, recheck_window=3), recheck_every_frames=30,
                      embed_every_frames=3)
    first = feed(decider, 5, [v("ada", frame=f) for f in (0, 3, 6)])
    assert [e.name for e in first] == ["ada"]
    assert not decider.wants_embedding(5, 20) and decider.wants_embedding(5, 36)  # decided: re-check every 30
    assert feed(decider, 5, [v("bob", frame=36)]) == []
    assert decider.wants_embedding(5, 39)  # a disagreeing re-check comes back sooner
    assert feed(decider, 5, [v("ada", frame=39)]) == []  # agreement resets the suspicion
    assert not decider.wants_embedding(5, 42)
    events = feed(decider, 5, [v("bob", frame=f) for f in (69, 72, 75)])
    assert [(e.type, e.name) for e in events] == [("recognized", "bob")]
    assert decider.decision(5) == "bob" and decider.switches == 1


def test_track_without_enough_faces_ends_undecided_and_last_chance_decision() -> None:
    decider = Decider("hall", "door", DecisionPolicy(min_good_faces=3, min_good_faces_unknown=6))
    decider.seen(1, T0)
    assert [(e.type, e.decision) for e in decider.end_track(1, T0)] == [("track_ended", None)]
    feed(decider, 2, [v(None), v(None), v("ada")])
    events = decider.end_track(2, T0 + timedelta(seconds=3))
    assert [e.type for e in events] == ["unknown", "track_ended"] and events[-1].decision == UNKNOWN
    assert events[-1].duration_s == pytest.approx(3.0)


@pytest.mark.parametrize("kwargs", [{"min_good_faces": 0}, {"min_good_faces": 5, "min_good_faces_unknown": 4},
                                    {"min_vote_share": 0.4}, {"max_runner_up_ratio": 1.0}, {"runner_up_margin": -0.1}])
def test_bad_policy_is_refused(kwargs) -> None:
    with pytest.raises(ValueError):
        DecisionPolicy(**kwargs)


def test_a_face_refused_on_its_chip_is_tried_again_embed_every_frames_later() -> None:
    decider = Decider("st", "cam", embed_every_frames=3, recheck_every_frames=30)
    decider.seen(1, T0)
    assert decider.wants_embedding(1, 10)
    decider.refused_on_chip(1, 10)  # aligned, then refused as blurred
    assert [decider.wants_embedding(1, f) for f in (11, 12, 13)] == [False, False, True]
    decider.add_vote(1, v("ann", frame=13), T0)  # embedded on frame 13
    assert [decider.wants_embedding(1, f) for f in (14, 15, 16)] == [False, False, True]
    decider.refused_on_chip(1, 16)
    assert [decider.wants_embedding(1, f) for f in (17, 18, 19)] == [False, False, True]
    decider.refused_on_chip(99, 5)  # a track the decider never saw: nothing to remember
    assert decider.wants_embedding(99, 5)


def test_tracks_on_one_frame_reach_the_clusterer_as_apart() -> None:
    """Two faces on one frame are two people: the unknown track's hook call names the other tracks
    (by key) and the names they were recognised as."""
    decider = Decider("hall", "door", DecisionPolicy(min_good_faces=1, min_good_faces_unknown=1, max_faces_undecided=1),
                      clustering=True)
    for track_id in (1, 2, 3):
        decider.seen(track_id, T0)
    decider.seen_together([1, 2, 3])
    decider.seen(4, T0 + timedelta(seconds=5))  # on screen later, alone
    assert decider.add_vote(2, v("ada", seed=2), T0)[0].type == "recognized"
    decider.end_track(3, T0)  # an ended track still counts
    decider.add_vote(1, v(None, seed=1), T0 + timedelta(seconds=1))
    decider.add_vote(4, v(None, seed=4), T0 + timedelta(seconds=6))
    first, alone = decider.take_unknown_tracks()
    assert first.key == f"door:1:{T0.timestamp():.3f}"
    assert first.apart_from == (f"door:2:{T0.timestamp():.3f}", f"door:3:{T0.timestamp():.3f}")
    assert first.not_names == ("ada",)
    assert alone.apart_from == () and alone.not_names == ()
