"""H.264 reference gaps: a lost reference picture that the decoder hides.

When a reference picture's packet is lost (a transfer that dropped it, a
remux that skipped it), FFmpeg's H.264 decoder conceals the loss without a
word above debug level: it copies the previous picture in its place, and
every later picture of the GOP is decoded from that stand-in. Nothing in
the frames or the packets says so. The slice header does: reference
pictures number themselves (``frame_num``) 0, 1, 2, ... from each IDR
picture, so a jump in that count is a lost reference (H.264 7.4.3, unless
the stream declares such gaps allowed). :class:`FrameNumCheck` reads the
few bytes needed, per packet, without decoding.

Not parsed: memory-management operation 5, which restarts the count at 0;
a jump to 0 or 1 is therefore taken as a restart, never as a loss.
"""

from __future__ import annotations

_HIGH_PROFILES = {100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135}


class _Bits:
    """Exp-Golomb bit reader over an RBSP (emulation prevention removed)."""

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def u(self, n: int) -> int:
        v = 0
        for _ in range(n):
            byte = self.data[self.pos >> 3]  # IndexError past the end: caller gives up
            v = (v << 1) | ((byte >> (7 - (self.pos & 7))) & 1)
            self.pos += 1
        return v

    def ue(self) -> int:
        zeros = 0
        while self.u(1) == 0:
            zeros += 1
            if zeros > 31:
                raise ValueError("bad exp-Golomb code")
        return (1 << zeros) - 1 + self.u(zeros)

    def se(self) -> int:
        k = self.ue()
        return (k + 1) // 2 if k & 1 else -(k // 2)


def _rbsp(nal: bytes) -> bytes:
    """The NAL payload without its header byte and emulation-prevention bytes."""
    return bytes(nal[1:]).replace(b"\x00\x00\x03", b"\x00\x00")


def _parse_sps(nal: bytes) -> tuple[int, int, int, bool]:
    """(sps id, log2 of MaxFrameNum, separate colour planes, gaps allowed)."""
    b = _Bits(_rbsp(nal))
    profile = b.u(8)
    b.u(16)  # constraint flags, level
    sps_id = b.ue()
    separate_planes = 0
    if profile in _HIGH_PROFILES:
        chroma = b.ue()
        if chroma == 3:
            separate_planes = b.u(1)
        b.ue()  # bit depth luma
        b.ue()  # bit depth chroma
        b.u(1)  # qpprime_y_zero_transform_bypass
        if b.u(1):  # seq_scaling_matrix_present
            for i in range(8 if chroma != 3 else 12):
                if b.u(1):
                    last = nxt = 8
                    for _ in range(16 if i < 6 else 64):
                        if nxt:
                            nxt = (last + b.se()) % 256
                        last = nxt or last
    log2_max_frame_num = b.ue() + 4
    poc_type = b.ue()
    if poc_type == 0:
        b.ue()
    elif poc_type == 1:
        b.u(1)
        b.se()
        b.se()
        for _ in range(b.ue()):
            b.se()
    b.ue()  # max_num_ref_frames
    gaps_allowed = bool(b.u(1))
    return sps_id, log2_max_frame_num, separate_planes, gaps_allowed


def _nal_units(data: bytes | memoryview, length_size: int | None):
    """NAL units of a packet: length-prefixed (MP4/MKV ``avcC``) or Annex B."""
    if length_size:
        i, end = 0, len(data)
        while i + length_size <= end:
            n = int.from_bytes(data[i : i + length_size], "big")
            i += length_size
            if n <= 0 or i + n > end:
                return
            yield data[i : i + n]
            i += n
        return
    raw = bytes(data)
    starts = []
    i = raw.find(b"\x00\x00\x01")
    while i >= 0:
        starts.append(i + 3)
        i = raw.find(b"\x00\x00\x01", i + 3)
    for k, s in enumerate(starts):
        e = starts[k + 1] - 3 if k + 1 < len(starts) else len(raw)
        yield raw[s:e].rstrip(b"\x00")


class FrameNumCheck:
    """Feed packets in decode order; :meth:`packet` says whether a reference
    picture before this one is missing. Built from the stream's extradata
    (``avcC`` or Annex B parameter sets); parameter sets in packets are read
    too. Anything it cannot parse makes it say nothing (never a false alarm
    from a parser shortcoming)."""

    def __init__(self, extradata: bytes | None):
        self.sps: dict[int, tuple[int, int, bool]] = {}
        self.pps: dict[int, int] = {}
        self.length_size: int | None = None
        self.prev_ref: int | None = None
        data = bytes(extradata or b"")
        try:
            if data[:1] == b"\x01" and len(data) >= 7:
                self.length_size = (data[4] & 3) + 1
                self._avcc_parameter_sets(data)
            else:
                for nal in _nal_units(data, None):
                    self._parameter_set(nal)
        except (IndexError, ValueError):
            pass

    def _avcc_parameter_sets(self, data: bytes) -> None:
        """``avcC``: 5 header bytes, a count of SPS, each 16-bit-length-prefixed,
        then a count of PPS, likewise."""
        i = 5
        for mask in (0x1F, 0xFF):
            count, i = data[i] & mask, i + 1
            for _ in range(count):
                n = int.from_bytes(data[i : i + 2], "big")
                self._parameter_set(data[i + 2 : i + 2 + n])
                i += 2 + n

    def _parameter_set(self, nal) -> None:
        if not len(nal):
            return
        kind = nal[0] & 0x1F
        if kind == 7:
            sps_id, log2, planes, gaps = _parse_sps(nal)
            self.sps[sps_id] = (log2, planes, gaps)
        elif kind == 8:
            b = _Bits(_rbsp(nal[:16]))
            pps_id = b.ue()
            self.pps[pps_id] = b.ue()

    def packet(self, data) -> bool:
        """Whether a reference picture is missing before the picture in ``data``."""
        try:
            return self._packet(data)
        except (IndexError, ValueError, KeyError):
            return False

    def _packet(self, data) -> bool:
        for nal in _nal_units(data, self.length_size):
            if not len(nal):
                continue
            kind, ref = nal[0] & 0x1F, (nal[0] >> 5) & 3
            if kind in (7, 8):
                self._parameter_set(bytes(nal))
                continue
            if kind not in (1, 5):
                continue
            b = _Bits(_rbsp(nal[:40]))
            if b.ue() != 0:  # not the first slice of a picture
                continue
            b.ue()  # slice type
            log2, planes, gaps_allowed = self.sps[self.pps[b.ue()]]
            if planes:
                b.u(2)
            frame_num = b.u(log2)
            if kind == 5:  # IDR: the count restarts
                self.prev_ref = 0
                return False
            prev, self.prev_ref = self.prev_ref, (frame_num if ref else self.prev_ref)
            if prev is None or gaps_allowed:
                return False
            expected = (prev, (prev + 1) % (1 << log2))
            return frame_num not in expected and frame_num > 1
        return False
