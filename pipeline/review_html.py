"""report.html: the review of a run as one self-contained page.

Facts of the job, a timeline of the boxes per frame and class (SVG), and a
contact sheet of the flagged frames (``pipeline/review_flags.py`` decides
which, ``pipeline/thumbnails.py`` takes the thumbnails). Everything is
inline: JPEG thumbnails as data URIs, SVG outlines over them, CSS in the
head, no script, nothing fetched, so the page opens anywhere, offline, and
can be archived with the video.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping

import numpy as np

from models.detections import FACE, LABELS, PLATE, Detections

from .blur import regions
from .review_flags import PRIORITY, Flag, review_report

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
    if report.get("rescaled_frames"):
        r = report["rescaled"]
        row("frames of another size, scaled to the output's",
            f"{_e(r['count'])} (stored at "
            + ", ".join(f"{_e(w)}&times;{_e(h)}" for w, h in r["sizes"]) + ")")
    if report.get("left_out"):
        row("left out (not decodable or not writable here, or several pictures in one "
            "file; not anonymized)",
            "<b>" + ", ".join(f"<code>{_e(n)}</code>" for n in report["left_out"]) + "</b>")
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


def _turned(width: int, height: int, turns: int) -> tuple[int, int, str]:
    """Size and SVG transform that show stored-pixel coordinates on a picture
    turned ``turns`` quarter turns counter-clockwise (np.rot90)."""
    return {0: (width, height, ""),
            1: (height, width, f" transform='matrix(0 -1 1 0 0 {width})'"),
            2: (width, height, f" transform='matrix(-1 0 0 -1 {width} {height})'"),
            3: (height, width, f" transform='matrix(0 1 -1 0 {height} 0)'")}[turns % 4]


def _overlay(d: Detections, flagged: list[dict], zones: list[dict], width: int, height: int,
             mask_scale: float, turns: int = 0) -> str:
    """Regions, zones and flagged boxes (stored pixels) over a thumbnail turned
    ``turns`` quarter turns counter-clockwise."""
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
    view_w, view_h, transform = _turned(width, height, turns)
    return (f"<svg viewBox='0 0 {view_w} {view_h}' preserveAspectRatio='none' "
            f"xmlns='http://www.w3.org/2000/svg'><g{transform}>" + "".join(parts) + "</g></svg>")


def _sheet(picked: list[tuple[int, list[Flag]]], thumbs: Mapping[int, str],
           frames: Mapping[int, Detections], times: Mapping[int, float], zones: list[dict],
           zone_active, width: int, height: int, mask_scale: float, turns: int = 0) -> str:
    cards = []
    for f, fl in picked:
        if f not in thumbs:
            continue
        d = frames.get(f, Detections.empty())
        here = [z for z in zones if zone_active(z, f)]
        overlay = _overlay(d, [b for x in fl for b in x.boxes], here, width, height, mask_scale,
                           turns)
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
                note: str = "", turns: int = 0) -> str:
    """The whole self-contained page (no script, no request leaves it);
    thumbnails turned ``turns`` quarter turns as a player shows the video."""
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
        _sheet(picked, thumbs, frames, times, zones, zone_active, width, height, mask_scale,
               turns),
        "<h2>All flags</h2>",
        _flag_table(flags, times),
    ]
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width,initial-scale=1'>"
            "<link rel='icon' href='data:,'>"
            f"<title>{_e(title)}</title><style>{CSS}</style></head><body>"
            + "".join(body) + "</body></html>")


def render_image_page(report: dict, names: Mapping[int, str], frames: Mapping[int, Detections],
                      flags: list[Flag], picked: list[tuple[int, list[Flag]]],
                      thumbs: Mapping[int, str], sizes: Mapping[int, tuple[int, int]]) -> str:
    """The page of an image folder: counts per image, the images worth a look."""
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
    n_img = len(names)
    chart = timeline_svg({i: d.with_class(FACE, PLATE) for i, d in frames.items()}, n_img, {},
                         flags, [i for i, _ in picked if i in thumbs], [])
    title = f"Anonymization report: {report.get('source', '')}"
    page = ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width,initial-scale=1'>"
            "<link rel='icon' href='data:,'>"
            f"<title>{_e(title)}</title><style>{CSS}</style></head><body>"
            f"<h1>{_e(title)}</h1>{_facts(report)}<h2>Boxes per image</h2>"
            f"<p class='muted'>{n_img} images in file-name order, numbers by value.</p>{chart}{_legend()}"
            f"<h2>Images worth a look ({len(cards)})</h2>"
            "<p class='muted'>Thumbnails of the anonymized images; outlines: regions blurred, "
            "the flagged box (yellow).</p>"
            f"<div class='sheet'>{''.join(cards)}</div></body></html>")
    return page
