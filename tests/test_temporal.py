"""Temporal filling closes short detection gaps in both directions in time."""

import numpy as np

from models.detections import CAR, FACE, PLATE, Detections
from pipeline.temporal import context_frames, fill_segment


def box(x, y, s=20, cls=FACE, conf=0.9):
    return Detections([[x, y, x + s, y + s]], [conf], [cls])


def track(frames, x0=100, dx=4, cls=FACE):
    """An object moving right by dx px per frame, seen on the given frames."""
    return {f: box(x0 + dx * f, 50, cls=cls) for f in frames}


def test_gap_within_window_is_interpolated():
    dets = track([0, 1, 2, 6, 7, 8])  # missed on 3, 4, 5
    out = fill_segment(dets, range(9), fill=3)
    for f in (3, 4, 5):
        d = out[f]
        assert len(d) >= 1 and d.filled.all()
        # interpolated position, not a held stale box
        expected_x = 100 + 4 * f
        assert np.isclose(d.xyxy[:, 0], expected_x, atol=0.5).any()


def test_gap_longer_than_window_is_only_held():
    dets = track([0, 10])
    out = fill_segment(dets, range(11), fill=3)
    assert [f for f in range(11) if len(out[f])] == [0, 1, 2, 3, 7, 8, 9, 10]


def test_first_and_last_sighting_are_held_both_ways():
    dets = track([5, 6, 7])
    out = fill_segment(dets, range(13), fill=2)
    seen = [f for f in range(13) if len(out[f])]
    assert seen == [3, 4, 5, 6, 7, 8, 9]
    assert out[3].filled.all() and out[9].filled.all()
    assert not out[6].filled.any()


def covers(d: Detections, xyxy) -> bool:
    x1, y1, x2, y2 = xyxy
    return any(a <= x1 and b <= y1 and c >= x2 and e >= y2 for a, b, c, e in d.xyxy)


def test_held_boxes_follow_a_moving_object_and_keep_where_it_was():
    """A plate on a passing car moves by about its width per frame: a held box
    that stays put is off the plate after a frame or two. Held boxes grow along
    the motion seen between the last two sightings (the first two, held back)."""
    dx = 20  # the box's own width per frame
    dets = track([5, 6, 7], dx=dx)
    out = fill_segment(dets, range(13), fill=3)
    for f in (2, 3, 4, 8, 9, 10):
        where_it_went = [100 + dx * f, 50, 120 + dx * f, 70]
        last = 7 if f > 7 else 5
        where_it_was = [100 + dx * last, 50, 120 + dx * last, 70]
        assert covers(out[f], where_it_went) and covers(out[f], where_it_was), f
        assert out[f].filled.all()
    # a single sighting has no motion to follow: held where it was
    out = fill_segment({4: box(100, 50)}, range(9), fill=2)
    assert [out[f].xyxy.tolist() for f in (2, 3, 5, 6)] == [[[100, 50, 120, 70]]] * 4


def test_held_boxes_use_only_the_window_of_their_frame():
    """The motion is taken only from a sighting within fill + 1 frames of the
    held frame, so the rule stays local (segments equal the whole video)."""
    dets = track([2, 4], dx=10)  # the sighting before the last one (4) is at 2
    out = fill_segment(dets, range(9), fill=3)
    assert out[5].xyxy.tolist() == [[140.0, 50.0, 170.0, 70.0]]  # 2 >= 5 - 3 - 1
    assert out[6].xyxy.tolist() == [[140.0, 50.0, 180.0, 70.0]]  # 2 >= 6 - 3 - 1
    assert out[7].xyxy.tolist() == [[140.0, 50.0, 160.0, 70.0]]  # 2 < 7 - 3 - 1: held still


def test_different_labels_never_link():
    dets = {0: box(100, 50, cls=FACE), 3: box(100, 50, cls=PLATE)}
    out = fill_segment(dets, range(4), fill=3)
    # frames 1, 2 are holds (face forward, plate backward), never an interpolation
    for f in (1, 2):
        assert set(out[f].class_id) == {FACE, PLATE}


def test_vehicles_pass_through_unfilled():
    dets = {0: box(0, 0, 50, cls=CAR), 2: box(0, 0, 50, cls=CAR)}
    out = fill_segment(dets, range(3), fill=2)
    assert len(out[1]) == 0


def test_fill_zero_is_identity():
    dets = track([0, 2])
    out = fill_segment(dets, range(3), fill=0)
    assert len(out[1]) == 0 and out[0] == dets[0]


def test_result_is_local_so_segments_equal_whole_video():
    """Filling a range with context_frames() of detections around it gives the
    same boxes as filling the whole video: what makes segments independent."""
    rng = np.random.default_rng(0)
    seen = sorted(set(rng.choice(60, 35, replace=False).tolist()))
    dets = track(seen)
    fill = 3
    whole = fill_segment(dets, range(60), fill)
    ctx = context_frames(fill)
    for start, stop in ((0, 17), (17, 40), (40, 60)):
        part = {f: d for f, d in dets.items() if start - ctx <= f < stop + ctx}
        seg = fill_segment(part, range(start, stop), fill)
        for f in range(start, stop):
            assert seg[f] == whole[f], f
