"""Review: the frames a person should look at before publishing, and the page showing them.

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

Every flag has a reason in words; ``report.json`` lists them under
``review`` (bounded, most urgent first), and ``report.html`` shows a
timeline of the detections per frame and class (filled boxes apart, flags
marked) and a contact sheet of the most urgent frames. Thumbnails are taken
from the *output* video, so they only ever show anonymized pixels; the
regions blurred are outlined on them. The flags are decided from the
detections alone, which every path has once all segments are done (also
the distributed reassemble step), and only the few chosen frames are
decoded again, seeking to each, so memory stays bounded whatever the length
of the video. ``anonymize review DIR`` rebuilds the page from a run's
records (detections.json, report.json, the output video). The page itself
is drawn by ``review_html.py``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from models.detections import FACE, LABELS, PLATE, Detections

from .temporal import match_matrix

REPORT_HTML = "report.html"
MAX_THUMBNAILS = 40  # frames on the contact sheet
MAX_ENTRIES = 1000  # review entries in report.json
NEAR_THRESHOLD = 0.1  # a detection this close above its threshold is "weak"
EDGE = 0.02  # a box within this share of the frame size from an edge is leaving the picture
THUMB_WIDTH = 320
KINDS = ("vanish", "appear", "gap", "weak", "first", "last", "crowded")
PRIORITY = {"vanish": 0, "appear": 0, "gap": 1, "weak": 2, "first": 3, "last": 3,
            "crowded": 4}
SEEK_GAP = 2.0  # seconds: a frame further ahead is reached by seeking, nearer by decoding on


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


# -------------------------------------------------------------- thumbnails


def _jpeg(rgb: np.ndarray, width: int = THUMB_WIDTH) -> str:
    import cv2

    h, w = rgb.shape[:2]
    if w > width:
        rgb = cv2.resize(rgb, (width, max(1, round(h * width / w))), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, 80])
    if not ok:
        raise ValueError("could not encode a thumbnail")
    return base64.b64encode(buf.tobytes()).decode("ascii")


def grab_thumbnails(path: Path, wanted: Mapping[int, Fraction], width: int = THUMB_WIDTH
                    ) -> dict[int, str]:
    """JPEG thumbnails (base64) of the frames of ``path`` shown at the times in
    ``wanted`` (frame index -> seconds, exact). Frames far apart are reached by
    seeking to the keyframe before them; only one frame is held at a time."""
    from .video.decode import to_rgb
    from .video.probe import open_input, video_stream

    out: dict[int, str] = {}
    targets = sorted(wanted.items(), key=lambda kv: kv[1])
    if not targets:
        return out
    with open_input(path) as c:
        vs = video_stream(c, path)
        tb = Fraction(vs.time_base.numerator, vs.time_base.denominator)
        rate = vs.average_rate or vs.guessed_rate
        eps = Fraction(1, 2) / Fraction(rate) if rate else Fraction(1, 50)
        frames = None
        held = None  # a frame read past its target, which the next target may want
        pos: Fraction | None = None

        def pull():
            nonlocal held
            if held is not None:
                frame, held = held, None
                return frame
            for frame in frames:
                if frame.pts is not None:
                    return frame
            return None

        for idx, t in targets:
            if frames is None or pos is None or t < pos - eps or t - pos > SEEK_GAP:
                c.seek(max(0, int(t / tb)), stream=vs, backward=True, any_frame=False)
                frames, held = c.decode(vs), None
            best = None
            while True:
                frame = pull()
                if frame is None:
                    break
                ft = frame.pts * tb
                pos = ft
                if ft < t - eps:
                    best = frame  # the nearest frame before, if the wanted one is missing
                    continue
                if ft <= t + eps:
                    best = frame
                else:
                    held = frame
                break
            if best is not None and abs(best.pts * tb - t) <= eps:
                out[idx] = _jpeg(to_rgb(best), width)
    return out


# ---------------------------------------------------------------- entry points


def frames_of(doc: dict) -> tuple[dict[int, Detections], dict[int, Fraction]]:
    """Final boxes and exact times (seconds) per frame of a detections.json document."""
    tb = Fraction(doc.get("time_base", "0"))
    frames, times = {}, {}
    for entry in doc.get("frames", []):
        f = entry["frame_idx"]
        frames[f] = Detections.from_dicts(entry["detections"])
        if "pts" in entry:
            times[f] = entry["pts"] * tb
    return frames, times


def review_flags(frames: Mapping[int, Detections], times: Mapping[int, Fraction],
                 settings: Mapping, width: int, height: int) -> dict:
    """The ``review`` entries and summary for report.json (see :func:`find_flags`)."""
    flags, n_objects = find_flags(frames, settings, width, height)
    picked = pick_frames(flags)
    return review_report(flags, n_objects, {k: float(v) for k, v in times.items()}, len(picked))


def write_page(records_dir: Path, video: Path | None = None, report: dict | None = None,
               out: Path | None = None) -> Path:
    """Build ``report.html`` in ``records_dir`` from its detections.json and report.json
    (or ``report``) and thumbnails of ``video`` (the anonymized output)."""
    from .records import DETECTIONS_JSON, REPORT_JSON
    from .review_html import render_page
    from .video.output import write_atomic

    records_dir = Path(records_dir)
    doc = json.loads((records_dir / DETECTIONS_JSON).read_text())
    if report is None:
        report = json.loads((records_dir / REPORT_JSON).read_text())
    frames, exact = frames_of(doc)
    times = {k: float(v) for k, v in exact.items()}
    inp = report.get("input", {})
    width = int(doc.get("width") or inp.get("width") or 1)
    height = int(doc.get("height") or inp.get("height") or 1)
    flags, _ = find_flags(frames, report.get("settings", {}), width, height)
    picked = pick_frames(flags)
    thumbs: dict[int, str] = {}
    note = ""
    if video is not None and Path(video).is_file():
        try:
            thumbs = grab_thumbnails(Path(video), {f: exact[f] for f, _ in picked if f in exact})
        except Exception as exc:  # a page without thumbnails beats no page
            note = f"thumbnails could not be taken from {Path(video).name}: {exc}"
    elif picked:
        note = "the output video was not found, so there are no thumbnails"
    n_frames = int(report.get("input", {}).get("frames") or (max(frames) + 1 if frames else 0))
    page = render_page(report, frames, times, n_frames, flags, picked, thumbs,
                       doc.get("zones", []), width, height, note)
    return write_atomic(Path(out or records_dir / REPORT_HTML), page.encode())


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


def write_image_page(out_dir: Path, found: Mapping[str, Detections], report: dict) -> Path:
    """``report.html`` for an image folder: counts per image and a contact sheet of the
    images most worth a look, thumbnails of the blurred images written in ``out_dir``."""
    import cv2

    from .review_html import render_image_page
    from .video.output import write_atomic

    out_dir = Path(out_dir)
    order = list(found)
    names = dict(enumerate(order))
    frames = {i: found[name] for i, name in names.items()}
    flags = image_flags(frames, names, report.get("settings", {}))
    picked = pick_frames(flags)
    thumbs, sizes = {}, {}
    for i, _ in picked:
        bgr = cv2.imread(str(out_dir / names[i]), cv2.IMREAD_COLOR)
        if bgr is not None:
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            sizes[i] = rgb.shape[1], rgb.shape[0]
            thumbs[i] = _jpeg(rgb)
    page = render_image_page(report, names, frames, flags, picked, thumbs, sizes)
    return write_atomic(out_dir / REPORT_HTML, page.encode())
