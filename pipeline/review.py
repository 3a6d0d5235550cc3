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
records (detections.json, report.json, the output video).
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from models.detections import FACE, LABELS, PLATE, Detections

from .blur import regions
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


# -------------------------------------------------------------------- page

COLOURS = {"face": "#e4572e", "plate": "#1f7ae0", "exclude": "#19a974", "force": "#9b51e0",
           "vanish": "#d7263d", "appear": "#d7263d", "gap": "#f29e4c", "weak": "#c9a800",
           "first": "#6c757d", "last": "#6c757d", "crowded": "#6c757d", "flagged": "#ffd400"}

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:1.5em auto;max-width:1100px;padding:0 1em;
color:#1d1d1f}
h1{font-size:1.5em;margin:.2em 0}h2{font-size:1.15em;margin:1.4em 0 .5em}
table.facts{border-collapse:collapse}table.facts td,table.facts th{padding:2px 10px 2px 0;
text-align:left;vertical-align:top}table.facts th{font-weight:600;white-space:nowrap}
code{font-size:.9em}.muted{color:#666}
#timeline{width:100%;height:auto;border:1px solid #ddd;background:#fafafa}
.legend span{display:inline-block;margin-right:1.2em}
.legend i{display:inline-block;width:12px;height:12px;margin-right:4px;vertical-align:-1px}
.sheet{display:grid;grid-template-columns:repeat(auto-fill,minmax(250px,1fr));gap:14px}
figure.thumb{margin:0;border:1px solid #ddd;border-radius:4px;overflow:hidden;background:#fff}
figure.thumb .frame{position:relative;line-height:0}
figure.thumb img{width:100%;height:auto;display:block}
figure.thumb svg{position:absolute;left:0;top:0;width:100%;height:100%}
figure.thumb figcaption{padding:6px 8px;font-size:12.5px}
figure.thumb ul{margin:4px 0 0;padding-left:1.1em}
.kind{font-weight:600;text-transform:uppercase;font-size:11px;letter-spacing:.03em}
table.flags{border-collapse:collapse;width:100%;font-size:13px}
table.flags td,table.flags th{border-bottom:1px solid #eee;padding:3px 6px;text-align:left;
vertical-align:top}
"""


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _fmt_time(t: float | None) -> str:
    if t is None:
        return "?"
    m, s = divmod(float(t), 60)
    return f"{int(m)}:{s:05.2f}"


def _facts(report: dict) -> str:
    rows = []

    def row(name, value):
        if value not in (None, "", {}, []):
            rows.append(f"<tr><th>{_e(name)}</th><td>{value}</td></tr>")

    inp, out = report.get("input", {}), report.get("output_stream", {})
    row("input", f"<code>{_e(report.get('source', '?'))}</code>" + (
        f" &middot; {_e(inp.get('codec'))} {inp.get('width')}&times;{inp.get('height')}, "
        f"{inp.get('frames')} frames, {inp.get('avg_fps')} fps, {inp.get('duration_s')} s"
        if inp else ""))
    row("output", f"<code>{_e(report.get('output', '?'))}</code>" + (
        f" &middot; {_e(out.get('codec'))} {out.get('width')}&times;{out.get('height')}, "
        f"{out.get('frames')} frames" if out else ""))
    if "frames_match" in report:
        row("frames and timestamps", "same as the input" if report["frames_match"]
            else "<b>differ from the input</b>")
    if report.get("damaged_frames"):
        row("damaged frames", _e(report["damaged_frames"]))
    det, filled = report.get("detections", {}), report.get("filled_boxes", {})
    row("detections", ", ".join(f"{_e(k)}: {v}" for k, v in det.items()))
    row("boxes added by filling", ", ".join(f"{_e(k)}: {v}" for k, v in filled.items()))
    if report.get("render"):
        r = report["render"]
        row("rendered from", f"<code>{_e(r.get('detections_file', ''))}</code> (no detector): "
            + ", ".join(f"{_e(k)} {_e(v)}" for k, v in r.items() if k != "detections_file"))
    models = report.get("models", {})
    row("models", ", ".join(f"{_e(k)}: <code>{_e(v)}</code>" for k, v in models.items()))
    zones = report.get("zones", [])
    if zones:
        row("zones", "; ".join(_e(_zone_text(z)) for z in zones))
    timings = dict(report.get("timings", {}))
    for k in ("wall_s", "fps", "model_load_s"):
        if report.get(k) is not None:
            timings[k] = report[k]
    row("timings", ", ".join(f"{_e(k)} {_e(v)}" for k, v in timings.items()))
    settings = report.get("settings", {})
    if settings:
        text = ", ".join(f"{_e(k)}={_e(json.dumps(v))}" for k, v in settings.items())
        row("settings", f"<details><summary>{len(settings)} settings</summary>"
                        f"<code>{text}</code></details>")
    return "<table class='facts'>" + "".join(rows) + "</table>"


def _zone_text(z: dict) -> str:
    what = "never blurred" if z["kind"] == "exclude" else "always blurred"
    shape = f"box {z['box']}" if "box" in z else f"polygon of {len(z['polygon'])} points"
    when = (f", frames {z['frames'][0]}-{z['frames'][1]}" if "frames" in z else
            f", {z['time_s'][0]}-{z['time_s'][1]} s" if "time_s" in z else "")
    note = f" ({z['note']})" if z.get("note") else ""
    return f"{what}: {shape}{when}{note}"


def _nice_step(span: float, ticks: int = 10) -> float:
    for step in (0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600):
        if span / step <= ticks:
            return step
    return 7200.0


def timeline_svg(frames: Mapping[int, Detections], n_frames: int, times: Mapping[int, float],
                 flags: list[Flag], thumbs: list[int], zones: list[dict]) -> str:
    """An SVG of detections per frame and class (detected solid, filled light),
    zone time ranges, every flag (coloured by kind), thumbnails as links."""
    width, left, right = 1000, 64, 10
    plot = width - left - right
    n = max(1, n_frames)
    bins = min(n, plot)
    bw = plot / bins
    row_h, gap = 38, 8
    labels = (FACE, PLATE)
    det = np.zeros((len(labels), bins), np.int32)
    fil = np.zeros((len(labels), bins), np.int32)
    for f, d in frames.items():
        b = min(bins - 1, f * bins // n)
        for r, c in enumerate(labels):
            sel = d.class_id == c
            det[r, b] = max(det[r, b], int((sel & ~d.filled).sum()))
            fil[r, b] = max(fil[r, b], int((sel & d.filled).sum()))
    parts = []
    y = 10
    for r, c in enumerate(labels):
        name = LABELS[c]
        top = max(1, int((det[r] + fil[r]).max()))
        base = y + row_h
        parts.append(f"<text x='{left - 8}' y='{y + row_h / 2 + 4}' text-anchor='end' "
                     f"font-size='12'>{name}s</text>")
        parts.append(f"<line x1='{left}' x2='{left + plot}' y1='{base}' y2='{base}' "
                     f"stroke='#bbb'/>")
        parts.append(f"<text x='{left + plot + 2}' y='{y + 9}' font-size='9' fill='#888'>"
                     f"{top}</text>")
        for b in np.flatnonzero(det[r] + fil[r]):
            x = left + b * bw
            hd = det[r, b] / top * row_h
            hf = fil[r, b] / top * row_h
            if hd:
                parts.append(f"<rect class='det-{name}' x='{x:.2f}' y='{base - hd:.2f}' "
                             f"width='{max(bw, 1):.2f}' height='{hd:.2f}' "
                             f"fill='{COLOURS[name]}'/>")
            if hf:
                parts.append(f"<rect class='fill-{name}' x='{x:.2f}' y='{base - hd - hf:.2f}' "
                             f"width='{max(bw, 1):.2f}' height='{hf:.2f}' "
                             f"fill='{COLOURS[name]}' fill-opacity='.35'/>")
        y += row_h + gap
    if zones:
        parts.append(f"<text x='{left - 8}' y='{y + 10}' text-anchor='end' font-size='12'>"
                     f"zones</text>")
        for k, z in enumerate(zones):
            a, b = 0, n - 1
            if "frames" in z:
                a, b = z["frames"][0], min(n - 1, z["frames"][1])
            elif "time_s" in z:
                inside = [f for f, t in times.items() if z["time_s"][0] <= t <= z["time_s"][1]]
                a, b = (min(inside), max(inside)) if inside else (0, -1)
            if b >= a:
                x1, x2 = left + a / n * plot, left + (b + 1) / n * plot
                yy = y + 3 + (k % 3) * 5
                parts.append(f"<rect x='{x1:.2f}' y='{yy}' width='{max(1.0, x2 - x1):.2f}' "
                             f"height='4' fill='{COLOURS[z['kind']]}'/>")
        y += 20
    # flags: one mark per bin, the most urgent kind; thumbnails as links above
    parts.append(f"<text x='{left - 8}' y='{y + 14}' text-anchor='end' font-size='12'>"
                 f"flags</text>")
    urgent: dict[int, Flag] = {}
    for fl in flags:
        b = min(bins - 1, fl.frame * bins // n)
        if b not in urgent or PRIORITY[fl.kind] < PRIORITY[urgent[b].kind]:
            urgent[b] = fl
    for b, fl in sorted(urgent.items()):
        x = left + (b + 0.5) * bw
        parts.append(f"<circle class='flag flag-{fl.kind}' cx='{x:.2f}' cy='{y + 10}' r='2.6' "
                     f"fill='{COLOURS[fl.kind]}'><title>frame {fl.frame}: "
                     f"{_e(fl.reason)}</title></circle>")
    for f in thumbs:
        x = left + (min(bins - 1, f * bins // n) + 0.5) * bw
        parts.append(f"<a href='#f{f}'><path class='thumb-mark' d='M{x - 4:.2f},{y + 16} "
                     f"L{x + 4:.2f},{y + 16} L{x:.2f},{y + 22} Z' fill='#333'><title>frame {f}: "
                     f"see its thumbnail</title></path></a>")
    y += 28
    if not times:  # images: no time, the axis counts them
        parts.append(f"<text x='{left}' y='{y + 12}' font-size='10'>1</text>"
                     f"<text x='{left + plot}' y='{y + 12}' font-size='10' text-anchor='end'>"
                     f"{n}</text>")
        return (f"<svg id='timeline' viewBox='0 0 {width} {y + 18}' role='img' "
                f"aria-label='detections per image' xmlns='http://www.w3.org/2000/svg'>"
                + "".join(parts) + "</svg>")
    # time axis
    t0 = times.get(min(times), 0.0) if times else 0.0
    t1 = times.get(max(times), 0.0) if times else 0.0
    span = max(t1 - t0, 1e-9)
    step = _nice_step(span)
    parts.append(f"<line x1='{left}' x2='{left + plot}' y1='{y}' y2='{y}' stroke='#999'/>")
    k = 0
    while k * step <= span + 1e-9:
        x = left + (k * step) / span * plot if span > 1e-9 else left
        parts.append(f"<line x1='{x:.2f}' x2='{x:.2f}' y1='{y}' y2='{y + 4}' stroke='#999'/>")
        parts.append(f"<text x='{x:.2f}' y='{y + 15}' font-size='10' text-anchor='middle'>"
                     f"{_fmt_time(t0 + k * step)}</text>")
        k += 1
    height = y + 22
    return (f"<svg id='timeline' viewBox='0 0 {width} {height}' role='img' "
            f"aria-label='detections per frame' xmlns='http://www.w3.org/2000/svg'>"
            + "".join(parts) + "</svg>")


def _legend() -> str:
    items = [("face", "faces detected"), ("plate", "plates detected")]
    out = [f"<span><i style='background:{COLOURS[k]}'></i>{t}</span>" for k, t in items]
    out += [f"<span><i style='background:{COLOURS[k]};opacity:.35'></i>{LABELS[c]}s filled</span>"
            for k, c in (("face", FACE), ("plate", PLATE))]
    out += [f"<span><i style='background:{COLOURS[k]};border-radius:6px'></i>{k}</span>"
            for k in ("vanish", "gap", "weak", "first")]
    out += [f"<span><i style='background:{COLOURS[k]}'></i>{k} zone</span>"
            for k in ("exclude", "force")]
    return "<p class='legend'>" + "".join(out) + "</p>"


def _overlay(d: Detections, flagged: list[dict], zones: list[dict], width: int, height: int,
             mask_scale: float) -> str:
    parts = []
    for filled in (False, True):
        sub = d[d.filled == filled]
        boxes, classes = regions(sub, width, height, mask_scale)
        for (x1, y1, x2, y2), c in zip(boxes, classes, strict=True):
            dash = " stroke-dasharray='5 3'" if filled else ""
            kind = "filled" if filled else "detected"
            parts.append(f"<rect class='region region-{kind}' x='{x1}' y='{y1}' "
                         f"width='{x2 - x1}' height='{y2 - y1}' fill='none' "
                         f"stroke='{COLOURS[LABELS[c]]}' stroke-width='2'{dash} "
                         f"vector-effect='non-scaling-stroke'/>")
    for z in zones:
        pts = ([[z["box"][0], z["box"][1]], [z["box"][2], z["box"][1]],
                [z["box"][2], z["box"][3]], [z["box"][0], z["box"][3]]]
               if "box" in z else z["polygon"])
        text = " ".join(f"{x:g},{y:g}" for x, y in pts)
        parts.append(f"<polygon class='zone zone-{z['kind']}' points='{text}' fill='none' "
                     f"stroke='{COLOURS[z['kind']]}' stroke-width='2' stroke-dasharray='2 2' "
                     f"vector-effect='non-scaling-stroke'/>")
    for b in flagged:
        x1, y1, x2, y2 = b["xyxy"]
        pad = 3
        parts.append(f"<rect class='flagged' x='{x1 - pad:.1f}' y='{y1 - pad:.1f}' "
                     f"width='{x2 - x1 + 2 * pad:.1f}' height='{y2 - y1 + 2 * pad:.1f}' "
                     f"fill='none' stroke='{COLOURS['flagged']}' stroke-width='2.5' "
                     f"vector-effect='non-scaling-stroke'/>")
    return (f"<svg viewBox='0 0 {width} {height}' preserveAspectRatio='none' "
            f"xmlns='http://www.w3.org/2000/svg'>" + "".join(parts) + "</svg>")


def _sheet(picked: list[tuple[int, list[Flag]]], thumbs: Mapping[int, str],
           frames: Mapping[int, Detections], times: Mapping[int, float], zones: list[dict],
           zone_active, width: int, height: int, mask_scale: float) -> str:
    cards = []
    for f, fl in picked:
        if f not in thumbs:
            continue
        d = frames.get(f, Detections.empty())
        here = [z for z in zones if zone_active(z, f)]
        overlay = _overlay(d, [b for x in fl for b in x.boxes], here, width, height, mask_scale)
        items = "".join(f"<li><span class='kind' style='color:{COLOURS[x.kind]}'>{x.kind}"
                        f"</span> {_e(x.reason)}</li>" for x in fl)
        cards.append(
            f"<figure class='thumb' id='f{f}'><div class='frame'>"
            f"<img alt='frame {f} (anonymized)' src='data:image/jpeg;base64,{thumbs[f]}'>"
            f"{overlay}</div><figcaption><b>frame {f}</b> &middot; {_fmt_time(times.get(f))}"
            f"<ul>{items}</ul></figcaption></figure>")
    return "<div class='sheet'>" + "".join(cards) + "</div>"


def _flag_table(flags: list[Flag], times: Mapping[int, float], limit: int = 300) -> str:
    rows = "".join(
        f"<tr><td><a href='#f{f.frame}'>{f.frame}</a></td><td>{_fmt_time(times.get(f.frame))}"
        f"</td><td><span class='kind' style='color:{COLOURS[f.kind]}'>{f.kind}</span></td>"
        f"<td>{_e(f.reason)}</td></tr>" for f in flags[:limit])
    more = (f"<p class='muted'>{len(flags) - limit} more in report.json (<code>review</code>)."
            f"</p>" if len(flags) > limit else "")
    return ("<table class='flags'><tr><th>frame</th><th>time</th><th>kind</th><th>reason</th>"
            f"</tr>{rows}</table>{more}")


def render_page(report: dict, frames: Mapping[int, Detections], times: Mapping[int, float],
                n_frames: int, flags: list[Flag], picked: list[tuple[int, list[Flag]]],
                thumbs: Mapping[int, str], zones: list[dict], width: int, height: int,
                note: str = "") -> str:
    """The whole self-contained page (no script, no request leaves it)."""
    mask_scale = float(report.get("settings", {}).get("mask_scale", 1.0))

    def zone_active(z: dict, f: int) -> bool:
        if "frames" in z:
            return z["frames"][0] <= f <= z["frames"][1]
        if "time_s" in z:
            t = times.get(f)
            return t is not None and z["time_s"][0] <= t <= z["time_s"][1]
        return True

    summary = review_report(flags, 0, times)["review_summary"]["by_kind"]
    counts = ", ".join(f"{v} {k}" for k, v in summary.items()) or "none"
    title = f"Anonymization report: {report.get('source', '')}"
    shown = [f for f, _ in picked if f in thumbs]
    body = [
        f"<h1>{_e(title)}</h1>",
        _facts(report),
        "<h2>Timeline</h2>",
        "<p class='muted'>Boxes per frame (the most in each column) by class; filled boxes "
        "are stacked above detected ones. Dots: review flags (hover for the reason); "
        "triangles link to the thumbnails below.</p>",
        timeline_svg(frames, n_frames, times, flags, shown, zones),
        _legend(),
        f"<h2>Frames worth a look ({len(shown)} of {len(flags)} flags' frames)</h2>",
        f"<p class='muted'>Flags: {_e(counts)}. Thumbnails are frames of the anonymized "
        "output; outlines: regions blurred (solid: detected, dashed: filled), the flagged "
        "object (yellow), zones (green: never blurred, purple: always blurred).</p>",
        f"<p class='muted'>{_e(note)}</p>" if note else "",
        _sheet(picked, thumbs, frames, times, zones, zone_active, width, height, mask_scale),
        "<h2>All flags</h2>",
        _flag_table(flags, times),
    ]
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width,initial-scale=1'>"
            "<link rel='icon' href='data:,'>"
            f"<title>{_e(title)}</title><style>{CSS}</style></head><body>"
            + "".join(body) + "</body></html>")


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
    mask_scale = float(report.get("settings", {}).get("mask_scale", 1.0))
    cards = []
    for i, fl in picked:
        if i not in thumbs:
            continue
        w, h = sizes[i]
        overlay = _overlay(frames[i].with_class(FACE, PLATE), [b for x in fl for b in x.boxes],
                           [], w, h, mask_scale)
        items = "".join(f"<li><span class='kind' style='color:{COLOURS[x.kind]}'>{x.kind}"
                        f"</span> {_e(x.reason)}</li>" for x in fl)
        cards.append(f"<figure class='thumb' id='f{i}'><div class='frame'>"
                     f"<img alt='{_e(names[i])} (anonymized)' "
                     f"src='data:image/jpeg;base64,{thumbs[i]}'>{overlay}</div>"
                     f"<figcaption><b>{_e(names[i])}</b><ul>{items}</ul></figcaption></figure>")
    n_img = len(order)
    chart = timeline_svg({i: d.with_class(FACE, PLATE) for i, d in frames.items()}, n_img, {},
                         flags, [i for i, _ in picked if i in thumbs], [])
    title = f"Anonymization report: {report.get('source', '')}"
    page = ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width,initial-scale=1'>"
            "<link rel='icon' href='data:,'>"
            f"<title>{_e(title)}</title><style>{CSS}</style></head><body>"
            f"<h1>{_e(title)}</h1>{_facts(report)}<h2>Boxes per image</h2>"
            f"<p class='muted'>{n_img} images in file-name order.</p>{chart}{_legend()}"
            f"<h2>Images worth a look ({len(cards)})</h2>"
            "<p class='muted'>Thumbnails of the anonymized images; outlines: regions blurred, "
            "the flagged box (yellow).</p>"
            f"<div class='sheet'>{''.join(cards)}</div></body></html>")
    return write_atomic(out_dir / REPORT_HTML, page.encode())
