"""Damaged input: which frames could not be shown as the file meant them.

Policy (README, "Damaged input"): decode what can be decoded, as a player
does, and say what could not be.

* **skipped**: a frame the file lists (its packet is there, with a time)
  that does not decode. It is *left out* of the output: a player cannot
  show it either and keeps the previous picture on screen until the next
  frame, which is exactly how the output plays, since every frame it holds
  keeps its time and lasts until the next one. Nothing is invented: a
  stand-in picture (the previous frame repeated) would be shown for a frame
  nobody detected on, and would change what the player shows.
* **concealed**: a frame the decoder did output, from damaged data: it
  flagged the frame as concealed, or the frame is predicted (same GOP, later
  in decode order) from a skipped, concealed or lost picture. It is kept
  and anonymized like any other (its pixels are what a player shows).
* **unreadable**: frames the file promised but that cannot even be read
  (the container's index lists more frames than the file holds, or the
  demuxer stopped with an error: at least one frame). No time is known.

``damaged_frames`` is their sum; the report lists the first frames of each
kind with their index and time, and the first messages FFmpeg gave.

Not damage, but also not shown as stored: frames of another size than the
stream's first (a stream that changes size midway) are **rescaled** to it,
since one output stream has one size; detection runs on what is encoded, so
every such frame is anonymized as shown. ``rescaled_frames`` counts them.
"""

from __future__ import annotations

from fractions import Fraction

from .decode import DecodeLog
from .probe import VideoInfo

# frames listed per kind in the report (the counts are always complete)
LISTED = 20


def segment_damage(info: VideoInfo, start: int, stop: int, ctx_start: int, ctx_stop: int,
                   log: DecodeLog) -> dict:
    """Skipped and concealed frame indices among the frames [start, stop) a
    segment owns, from the decoding of its context [ctx_start, ctx_stop), and
    the rescaled ones with their sizes when there are some."""
    known = info.frame_pts[ctx_start:ctx_stop]
    missing = set(known) - log.shown
    concealed = log.concealed(missing)
    pts = info.frame_pts
    out = {
        "skipped": [i for i in range(start, stop) if pts[i] in missing],
        "concealed": [i for i in range(start, stop) if pts[i] in concealed],
        "messages": list(log.messages),
    }
    if log.rescaled:
        out.update(rescaled=[i for i in range(start, stop) if pts[i] in log.rescaled],
                   sizes=sorted([w, h] for w, h in log.sizes))
    return out


def skipped_indices(segment_damages: list[dict]) -> set[int]:
    return {i for d in segment_damages for i in d.get("skipped", [])}


def damage_report(info: VideoInfo, segment_damages: list[dict]) -> dict:
    """The ``damaged_frames`` count and the ``damage`` details of report.json."""
    skipped = sorted(skipped_indices(segment_damages))
    concealed = sorted({i for d in segment_damages for i in d.get("concealed", [])} - set(skipped))
    unreadable = int(info.damage.get("unreadable", 0)) + int(info.damage.get("rejected", 0))
    duplicates = int(info.damage.get("duplicates", 0))
    messages: list[str] = []
    for m in [*info.damage.get("messages", []), *(m for d in segment_damages
                                                  for m in d.get("messages", []))]:
        if m not in messages and len(messages) < 5:
            messages.append(m)
    total = len(skipped) + len(concealed) + unreadable + duplicates
    if not total:
        return {"damaged_frames": 0}
    report = {
        "damaged_frames": total,
        "damage": {
            "skipped": {"count": len(skipped), "frames": _listed(info, skipped),
                        "meaning": "listed by the file but not decodable: left out of the output"},
            "concealed": {"count": len(concealed), "frames": _listed(info, concealed),
                          "meaning": "decoded from damaged data: kept and anonymized"},
            "unreadable": {"count": unreadable,
                           "meaning": "promised by the file (at least one) but not readable: "
                                      "reading stopped where the file is cut short or "
                                      "damaged beyond what the demuxer can skip"},
            "messages": messages,
        },
    }
    if duplicates:
        report["damage"]["duplicates"] = {
            "count": duplicates,
            "meaning": "a further frame at the time of another (damaged timing): one picture "
                       "is shown at a time, the first decoded is kept, this one left out"}
    return report


def rescale_report(info: VideoInfo, segment_damages: list[dict]) -> dict:
    """``rescaled_frames`` and, when there are some, ``rescaled`` (which frames,
    the sizes they had, the size they were scaled to) for report.json."""
    rescaled = sorted({i for d in segment_damages for i in d.get("rescaled", [])})
    if not rescaled:
        return {"rescaled_frames": 0}
    sizes = sorted({tuple(size) for d in segment_damages for size in d.get("sizes", [])})
    return {
        "rescaled_frames": len(rescaled),
        "rescaled": {"count": len(rescaled), "frames": _listed(info, rescaled),
                     "sizes": [list(size) for size in sizes], "to": [info.width, info.height],
                     "meaning": "stored at another size than the stream's first frames: "
                                "scaled to that size, then detected and anonymized"},
    }


def left_out_report(left_out: list[dict]) -> dict:
    """``left_out_packets`` and, when there are some, ``left_out`` (the first
    ones: stream, time, the output's reason) for report.json: audio or
    subtitle packets too damaged for the output container to take."""
    if not left_out:
        return {"left_out_packets": 0}
    return {"left_out_packets": len(left_out), "left_out": left_out[:LISTED]}


def input_warnings(source, report: dict) -> list[str]:
    """One line each for stderr about what the input made of the output:
    damage, frames of another size, damaged packets left out of the copy, and
    an output that does not show the input's frames at their times (the
    command then exits with status 1, which was all it said)."""
    damaged = damage_warning(source, report)
    lines = [damaged] if damaged else []
    if report.get("frames_match") is False:
        written = report.get("output_stream", {}).get("frames", "?")
        lines.append(f"{report.get('output', 'the output')} does not show the frames of {source} "
                     f"at their times ({written} frame(s) written for {report.get('frames')}; "
                     f"frames_match is false in report.json)")
    n = report.get("left_out_packets", 0)
    if n:
        first = report["left_out"][0]
        lines.append(f"{source} has {n} damaged audio/subtitle packet(s) the output cannot "
                     f"take, left out (first: {first['type']} stream {first['index']} at "
                     f"{first['time_s']:g} s: {first['reason']}); details in report.json")
    n = report.get("rescaled_frames", 0)
    if n:
        r = report["rescaled"]
        sizes = ", ".join(f"{w}x{h}" for w, h in r["sizes"])
        first = r["frames"][0]["time_s"]
        lines.append(f"{source} changes size: {n} frame(s) stored at {sizes} (first at "
                     f"{first:g} s) were scaled to {r['to'][0]}x{r['to'][1]}, the size of "
                     f"the output; details in report.json")
    return lines


def _listed(info: VideoInfo, indices: list[int]) -> list[dict]:
    tb = Fraction(info.time_base)
    return [{"index": i, "time_s": round(float(info.frame_pts[i] * tb), 6)}
            for i in indices[:LISTED]]


def damage_warning(source, report: dict) -> str | None:
    """One line for stderr, naming the user's file, or None for a clean input."""
    n = report.get("damaged_frames", 0)
    if not n:
        return None
    d = report["damage"]
    parts = []
    if d["skipped"]["count"]:
        first = d["skipped"]["frames"][0]["time_s"]
        parts.append(f"{d['skipped']['count']} could not be decoded and are left out "
                     f"(first at {first:g} s)")
    if d["concealed"]["count"]:
        first = d["concealed"]["frames"][0]["time_s"]
        parts.append(f"{d['concealed']['count']} were decoded from damaged data "
                     f"(first at {first:g} s)")
    if d["unreadable"]["count"]:
        parts.append(f"at least {d['unreadable']['count']} could not be read (reading stopped "
                     f"where the file is cut short or damaged)")
    if d.get("duplicates", {}).get("count"):
        parts.append(f"{d['duplicates']['count']} had the time of another frame and are left "
                     f"out")
    bound = "at least " if d["unreadable"]["count"] else ""  # past the stop nothing is known
    return (f"{source} is damaged: {bound}{n} frame(s) affected: " + "; ".join(parts)
            + "; details in report.json")
