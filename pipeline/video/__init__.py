"""Video I/O: probe, GOP-aligned split, decode, H.264 encode, join by stream copy.

The product must hand back a video that plays exactly like the original, so
every step works in the source's own timestamps: a frame is named by its
presentation timestamp (``pts``) in the source video stream's time base,
and its *index* is its position in ``VideoInfo.frame_pts``. Audio, subtitle
and data streams are never decoded: their packets are copied byte for byte.

One module per job: :mod:`.probe` (what the source holds), :mod:`.segments`
(cutting at keyframes), :mod:`.decode` (frames out), :mod:`.encode` (frames
in, output containers), :mod:`.join` (segments + other streams -> output),
:mod:`.damage` (what a damaged source could not show), :mod:`.h264` (lost
H.264 references), :mod:`.contain` (a raw stream with no timestamps put in
a container first). Distributed workers and ``anonymize run`` use the same
calls::

    info = probe(src)
    for seg in plan_segments(info, target_frames=250, context=5):
        split_segment(src, info, seg, "seg.mkv")       # stream copy where a container
        with VideoWriter("enc.mp4", info) as w:        # holds the codec; H.264, no B-frames
            log = DecodeLog()
            for pts, rgb in iter_frames("seg.mkv", info, log=log):
                if seg.start <= info.index_of(pts) < seg.stop:
                    w.write(blur(rgb), pts)
    join_segments(["enc0.mp4", ...], src, info, "out.mp4")
"""

from .decode import DecodeLog, iter_frames, segment_tag
from .encode import OUTPUT_SUFFIXES, VideoWriter, choose_pix_fmt, open_output
from .join import join_segments, output_shift
from .probe import VideoError, VideoInfo, probe, start_shift
from .segments import Segment, plan_segments, split_segment

__all__ = [
    "OUTPUT_SUFFIXES", "DecodeLog", "Segment", "VideoError", "VideoInfo", "VideoWriter",
    "choose_pix_fmt", "iter_frames", "join_segments", "output_shift", "start_shift", "open_output", "plan_segments", "probe",
    "segment_tag", "split_segment",
]
