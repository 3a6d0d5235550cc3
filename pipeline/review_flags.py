"""Review flags: which frames of a run a person should look at, and why.

No detector is perfect, and nobody can watch every frame of every video, so
a run points at the frames where a mistake is most likely. Sightings of the
same face or plate are linked into objects (the matching rule of temporal
filling, ``temporal.match_matrix``), and each object yields flags, most
urgent first:

* ``vanish`` / ``appear``: an object disappears (or shows up) in the middle
  of the picture, and from some frame on (or up to it) no box, detected or
  filled, covers the place: the detector may have lost it while it was still
  visible, and that frame is shown unblurred.
* ``gap``: the object was missed on several frames in a row and the boxes
  there are interpolated; check that they follow it.
* ``weak``: a detection just above its threshold (``--face-thresh``,
  ``--lp-thresh``): the detector barely found it, so on neighbouring frames
  it may have missed it, or it is no face or plate at all.
* ``first`` / ``last``: where each object is first and last seen.

An image folder has no time, so no objects: its flags are each image's
weakest find and the most ``crowded`` images (:func:`image_flags`).

Decided from the detections alone, with no pixel and no page: the entries
of report.json and the contact sheet (``review.py``) both start here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from models.detections import FACE, LABELS, PLATE, Detections

from .temporal import match_matrix

MAX_THUMBNAILS = 40  # frames on the contact sheet
MAX_ENTRIES = 1000  # review entries in report.json
NEAR_THRESHOLD = 0.1  # a detection this close above its threshold is "weak"
EDGE = 0.02  # a box within this share of the frame size from an edge is leaving the picture
KINDS = ("vanish", "appear", "gap", "weak", "first", "last", "crowded")
PRIORITY = {"vanish": 0, "appear": 0, "gap": 1, "weak": 2, "first": 3, "last": 3,
            "crowded": 4}


@dataclass
class Flag:
    frame: int
    kind: str
    reason: str
    boxes: list[dict]
    obj: int | None = None
    weight: float = 0.0

    def entry(self, time_s: float | None) -> dict:
        return {"frame": self.frame, "time_s": None if time_s is None else round(time_s, 3),
                "kind": self.kind, "object": self.obj, "reason": self.reason,
                "boxes": self.boxes}


@dataclass
class Track:
    """One face or plate followed over the frames where it was detected."""

    id: int
    label: int
    frames: list[int] = field(default_factory=list)
    boxes: list[np.ndarray] = field(default_factory=list)
    conf: list[float] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{LABELS[self.label]} #{self.id}"

    def add(self, frame: int, box: np.ndarray, conf: float) -> None:
        self.frames.append(frame)
        self.boxes.append(np.asarray(box, np.float32))
        self.conf.append(float(conf))


# ------------------------------------------------------------------ objects


def build_tracks(frames: Mapping[int, Detections], window: int) -> list[Track]:
    """Link the detected (not filled) faces and plates of consecutive frames into
    objects: a sighting continues the best-matching object last seen at most
    ``window`` frames before (greedy, best match first)."""
    tracks: list[Track] = []
    active: list[Track] = []
    for f in sorted(frames):
        d = frames[f]
        d = d[~d.filled].with_class(FACE, PLATE)
        active = [t for t in active if f - t.frames[-1] <= window]
        if not len(d):
            continue
        taken = np.zeros(len(d), bool)
        if active:
            score = np.zeros((len(active), len(d)), np.float32)
            for k, t in enumerate(active):
                last = Detections([t.boxes[-1]], [t.conf[-1]], [t.label])
                score[k] = match_matrix(last, d, f - t.frames[-1])[0]
            while score.size and score.max() > 0:
                k, j = np.unravel_index(int(score.argmax()), score.shape)
                active[k].add(f, d.xyxy[j], d.confidence[j])
                taken[j] = True
                score[k, :] = 0
                score[:, j] = 0
        for j in np.flatnonzero(~taken):
            t = Track(len(tracks) + 1, int(d.class_id[j]))
            t.add(f, d.xyxy[j], d.confidence[j])
            tracks.append(t)
            active.append(t)
    return tracks


def _box(label: int, xyxy, filled: bool = False) -> dict:
    return {"label": LABELS[label], "xyxy": [round(float(v), 2) for v in xyxy],
            "filled": bool(filled)}


def _near_edge(box: np.ndarray, width: int, height: int) -> bool:
    mx, my = EDGE * width, EDGE * height
    x1, y1, x2, y2 = (float(v) for v in box)
    return x1 <= mx or y1 <= my or x2 >= width - mx or y2 >= height - my


def _covered(frames: Mapping[int, Detections], frame: int, label: int, box: np.ndarray,
             gap: int) -> bool:
    d = frames.get(frame)
    if d is None:
        return True  # not decodable: nothing is shown there
    d = d.with_class(label)
    if not len(d):
        return False
    return bool(match_matrix(Detections([box], [1.0], [label]), d, gap).max() > 0)


def find_flags(frames: Mapping[int, Detections], settings: Mapping, width: int,
               height: int) -> tuple[list[Flag], int]:
    """The review flags of a video's final boxes (detected and filled), most urgent
    first, and the number of objects followed. ``settings``: the run's settings
    as a dict (fill_frames, face_thresh, lp_thresh)."""
    fill = int(settings.get("fill_frames", 0))
    window = fill + 1
    thresholds = {FACE: float(settings.get("face_thresh", 0.5)),
                  PLATE: float(settings.get("lp_thresh", 0.1))}
    thresh_flag = {FACE: "--face-thresh", PLATE: "--lp-thresh"}
    order = sorted(frames)
    if not order:
        return [], 0
    first_frame, last_frame = order[0], order[-1]
    tracks = build_tracks(frames, window)
    flags: list[Flag] = []
    for t in tracks:
        n = len(t.frames)
        what = LABELS[t.label]
        a, b = t.frames[0], t.frames[-1]
        if a == b:
            flags.append(Flag(a, "first", f"{t.name} seen on this frame only",
                              [_box(t.label, t.boxes[0])], t.id, 1))
        else:
            flags.append(Flag(a, "first", f"{t.name} first seen ({n} sightings up to frame {b})",
                              [_box(t.label, t.boxes[0])], t.id, n))
            flags.append(Flag(b, "last", f"{t.name} last seen ({n} sightings from frame {a})",
                              [_box(t.label, t.boxes[-1])], t.id, n))
        # disappearing / appearing mid-picture with no box covering the place
        if b < last_frame and not _near_edge(t.boxes[-1], width, height):
            for g in range(b + 1, min(last_frame, b + window) + 1):
                if not _covered(frames, g, t.label, t.boxes[-1], g - b):
                    held = f"filling held it {g - b - 1} frames" if g - b > 1 else "not filled"
                    flags.append(Flag(g, "vanish", f"{t.name} last seen on frame {b} in the "
                                      f"middle of the picture; from here no box covers that "
                                      f"place ({held}): is it still visible?",
                                      [_box(t.label, t.boxes[-1])], t.id, n))
                    break
        if a > first_frame and not _near_edge(t.boxes[0], width, height):
            for g in range(a - 1, max(first_frame, a - window) - 1, -1):
                if not _covered(frames, g, t.label, t.boxes[0], a - g):
                    flags.append(Flag(g, "appear", f"{t.name} first seen on frame {a} in the "
                                      f"middle of the picture; up to here no box covers that "
                                      f"place: was it visible already?",
                                      [_box(t.label, t.boxes[0])], t.id, n))
                    break
        # long interpolated gaps
        long_gap = max(2, (fill + 1) // 2)
        for (fa, ba), (fb, bb) in zip(zip(t.frames, t.boxes, strict=True),
                                      zip(t.frames[1:], t.boxes[1:], strict=True), strict=False):
            missed = fb - fa - 1
            if missed >= long_gap:
                m = (fa + fb) // 2
                s = (m - fa) / (fb - fa)
                box = ba * (1 - s) + bb * s
                flags.append(Flag(m, "gap", f"{t.name} missed on frames {fa + 1}-{fb - 1} "
                                  f"({missed} frames); its box there is interpolated: does "
                                  f"it follow the {what}?", [_box(t.label, box, True)], t.id,
                                  missed))
        # weakest detection, when just above the threshold
        k = int(np.argmin(t.conf))
        th = thresholds.get(t.label)
        if th is not None and t.conf[k] < th + NEAR_THRESHOLD:
            flags.append(Flag(t.frames[k], "weak", f"{t.name} at confidence {t.conf[k]:.2f}, "
                              f"just above {thresh_flag[t.label]} {th:g}: a weak find (missed "
                              f"nearby, or not a {what}?)", [_box(t.label, t.boxes[k])], t.id,
                              th + NEAR_THRESHOLD - t.conf[k]))
    return sort_flags(flags), len(tracks)


def sort_flags(flags: list[Flag]) -> list[Flag]:
    """Most urgent first: by kind, then the heavier (longer object, longer gap, weaker
    find), then earlier."""
    return sorted(flags, key=lambda f: (PRIORITY[f.kind], -f.weight, f.frame))


def pick_frames(flags: list[Flag], limit: int = MAX_THUMBNAILS) -> list[tuple[int, list[Flag]]]:
    """The frames of the contact sheet, most urgent flag first, up to ``limit``;
    each with every flag it carries; in frame order."""
    chosen: list[int] = []
    for f in flags:
        if f.frame not in chosen:
            if len(chosen) >= limit:
                break
            chosen.append(f.frame)
    by_frame: dict[int, list[Flag]] = {c: [] for c in chosen}
    for f in flags:
        if f.frame in by_frame:
            by_frame[f.frame].append(f)
    return [(c, by_frame[c]) for c in sorted(chosen)]


def review_report(flags: list[Flag], n_objects: int, times: Mapping[int, float],
                  n_thumbnails: int = 0) -> dict:
    """``review`` and ``review_summary`` for report.json."""
    by_kind = {k: sum(1 for f in flags if f.kind == k) for k in KINDS}
    return {
        "review": [f.entry(times.get(f.frame)) for f in flags[:MAX_ENTRIES]],
        "review_summary": {"flags": len(flags), "listed": min(len(flags), MAX_ENTRIES),
                           "objects": n_objects,
                           "by_kind": {k: v for k, v in by_kind.items() if v},
                           "thumbnails": n_thumbnails},
    }


# ------------------------------------------------------------------- images


def image_flags(found: Mapping[int, Detections], names: Mapping[int, str], settings: Mapping
                ) -> list[Flag]:
    """Flags of an image folder (no time, so no objects): each image's weakest face or
    plate when just above its threshold, and the images with the most boxes."""
    thresholds = {FACE: ("--face-thresh", float(settings.get("face_thresh", 0.5))),
                  PLATE: ("--lp-thresh", float(settings.get("lp_thresh", 0.1)))}
    flags = []
    for i, d in found.items():
        d = d.with_class(FACE, PLATE)
        if not len(d):
            continue
        for c, (flag, th) in thresholds.items():
            sub = d.with_class(c)
            if len(sub) and sub.confidence.min() < th + NEAR_THRESHOLD:
                k = int(sub.confidence.argmin())
                flags.append(Flag(i, "weak", f"{LABELS[c]} at confidence "
                                  f"{sub.confidence[k]:.2f}, just above {flag} {th:g}: a weak "
                                  f"find (or not a {LABELS[c]}?)",
                                  [_box(c, sub.xyxy[k])], None,
                                  th + NEAR_THRESHOLD - float(sub.confidence[k])))
        flags.append(Flag(i, "crowded", f"{len(d)} regions blurred in {names[i]}: a crowded "
                          f"picture, where a miss is easiest", [], None, len(d)))
    return sort_flags(flags)
