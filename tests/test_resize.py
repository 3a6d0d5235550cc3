"""Frame resizing into network inputs (models/resize.py) against torch's float
bilinear interpolation, the reference every detector was written against."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models import resize
from models.resize import letterbox_frames, resize_frames
from tests.videos import synthetic_frame


def frames(h, w, n=2, seed=0):
    """Real-looking content (shapes and gradients) plus noise, so edges are sampled."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        f = synthetic_frame(i, w, h).astype(np.int16) + rng.integers(-20, 21, (h, w, 3))
        out.append(np.clip(f, 0, 255).astype(np.uint8))
    return torch.from_numpy(np.stack(out))


def reference(batch, h, w, antialias):
    shrink = h < batch.shape[1] or w < batch.shape[2]
    return F.interpolate(batch.permute(0, 3, 1, 2).float(), size=(h, w), mode="bilinear",
                         align_corners=False, antialias=antialias and shrink)


@pytest.mark.parametrize("src,dst,antialias", [
    ((432, 768), (648, 1152), True),  # enlarging (OpenCV on each plane)
    ((48, 64), (97, 131), True),
    ((480, 640), (480, 960), False),
    ((1080, 1920), (540, 960), True),  # shrinking, antialiased
    ((1080, 1920), (540, 960), False),  # shrinking like OpenCV's INTER_LINEAR
    ((432, 768), (416, 416), True),  # one side shrinks, the other grows
])
def test_resizing_matches_float_bilinear(src, dst, antialias):
    batch = frames(*src)
    got = resize_frames(batch, *dst, antialias=antialias)
    assert got.shape == (2, 3, *dst) and got.dtype == torch.float32 and got.is_contiguous()
    assert float((got - reference(batch, *dst, antialias)).abs().max()) < 0.05


@pytest.mark.parametrize("src,dst", [((1080, 1920), (540, 960)), ((432, 768), (416, 416))])
def test_fast_shrink_is_within_one_grey_level(src, dst):
    batch = frames(*src)
    got = resize_frames(batch, *dst, fast_shrink=True)
    assert got.shape == (2, 3, *dst) and got.is_contiguous()
    diff = (got - reference(batch, *dst, True)).abs()
    assert float(diff.max()) <= 1.01 and float(diff.mean()) < 0.5


def test_same_size_keeps_exact_values():
    batch = frames(48, 64)
    got = resize_frames(batch, 48, 64)
    assert torch.equal(got, batch.permute(0, 3, 1, 2).float())


def test_enlarging_without_opencv_gives_torch_values_exactly():
    """What the YOLO letterbox relies on: the same rounding as torch's own kernel."""
    batch = frames(432, 768)
    got = resize_frames(batch, 540, 960, antialias=False, opencv_enlarge=False)
    assert torch.equal(got.round(), reference(batch, 540, 960, False).round())


# -- letterbox_frames: network inputs in whole grey levels ------------------------------

def rounded_reference(batch, h, w, antialias):
    return reference(batch, h, w, antialias).round().clamp(0, 255)


@pytest.mark.parametrize("src,dst,antialias", [
    ((432, 768), (540, 960), False),  # YOLO's 960 pass: enlarging, OpenCV on uint8
    ((432, 768), (360, 640), False),  # YOLO's 640 pass: a plain INTER_LINEAR shrink
    ((432, 768), (648, 1152), True),  # CenterFace at x1.5
    ((1080, 1920), (540, 960), True),  # an antialiased shrink: torch's uint8 kernel
])
def test_letterbox_is_within_one_grey_level_of_float_bilinear(src, dst, antialias):
    batch = frames(*src)
    got = letterbox_frames(batch, *dst, antialias=antialias)
    assert got.shape == (2, 3, *dst) and got.dtype == torch.float32 and got.is_contiguous()
    assert torch.equal(got, got.round())  # whole grey levels, as a uint8 image has
    diff = (got - rounded_reference(batch, *dst, antialias)).abs()
    assert float(diff.max()) <= 1 and float(diff.mean()) < 0.2


def test_letterbox_places_the_frame_on_a_filled_scaled_canvas():
    batch = frames(30, 40)
    got = letterbox_frames(batch, 60, 80, canvas=(64, 96), offset=(2, 8), fill=114, scale=0.5)
    assert got.shape == (2, 3, 64, 96)
    inside = got[:, :, 2:62, 8:88]
    assert float((inside - rounded_reference(batch, 60, 80, False) * 0.5).abs().max()) <= 0.5
    outside = got.clone()
    outside[:, :, 2:62, 8:88] = 57
    assert torch.equal(outside, torch.full_like(got, 57.0))
    same = letterbox_frames(batch, 30, 40, canvas=(32, 64), offset=(1, 0))
    assert torch.equal(same[:, :, 1:31, :40], batch.permute(0, 3, 1, 2).float())
    with pytest.raises(ValueError, match="does not fit"):
        letterbox_frames(batch, 60, 80, canvas=(64, 96), offset=(8, 0))


@pytest.mark.parametrize("dst", [(540, 960), (360, 640), (97, 131)])
def test_cpu_letterbox_agrees_with_the_other_devices_kernel(dst):
    """On a GPU the input is torch's float kernel rounded (frames stay on the device);
    run here on CPU, it is within one grey level of the OpenCV path."""
    batch = frames(432, 768)
    cpu = letterbox_frames(batch, *dst, canvas=(dst[0] + 4, dst[1]), offset=(2, 0), fill=114,
                           antialias=False)
    other = resize._torch_letterbox(batch, *dst, dst[0] + 4, dst[1], 2, 0, 114, 1.0, False)
    diff = (cpu - other).abs()
    assert float(diff.max()) <= 1 and float(diff.mean()) < 0.2


@pytest.mark.parametrize("src,dst,antialias", [
    ((216, 384), (324, 576), True),  # enlarged (CenterFace at --min-face 16): the uint8 path
    ((216, 384), (216, 384), True),  # native size
    ((432, 768), (300, 560), True),  # an antialiased shrink: the float path
])
def test_letterbox_tiles_are_the_letterboxed_frame_cut_and_padded(src, dst, antialias):
    """What CenterFace's tiled pass runs: the same values as cutting each tile out of
    :func:`letterbox_frames`' output and zero-padding it to the canvas."""
    from models.centerface import _aligned
    from models.tiling import tile_grid

    frame = frames(*src, n=1)[0]
    tiles = tile_grid(*dst, dst[0] + 12, 0.2, 32)  # whole height (unaligned), cut across
    assert len(tiles) > 1 and tiles[0].height % 32  # several tiles that need padding
    canvas = (_aligned(tiles[0].height), _aligned(tiles[0].width))
    got = list(resize.letterbox_tiles(frame, *dst, tiles, canvas, antialias=antialias))
    whole = letterbox_frames(frame[None], *dst, antialias=antialias)
    want = torch.stack([F.pad(t.crop(whole[0]), (0, canvas[1] - t.width, 0, canvas[0] - t.height))
                        for t in tiles])
    assert len(got) == 1 and got[0].dtype == torch.float32 and torch.equal(got[0], want)
    # in batches of at most one tile's pixels: one tile each, the same values in order
    one = canvas[0] * canvas[1]
    parts = list(resize.letterbox_tiles(frame, *dst, tiles, canvas, antialias=antialias,
                                        max_pixels=one))
    assert [len(p) for p in parts] == [1] * len(tiles) and torch.equal(torch.cat(parts), want)
    parts = list(resize.letterbox_tiles(frame, *dst, tiles, canvas, antialias=antialias,
                                        max_pixels=2 * one + 1))
    assert len(parts[0]) == min(2, len(tiles)) and torch.equal(torch.cat(parts), want)


@pytest.mark.parametrize(("src", "dst", "antialias"), [
    ((144, 176), (288, 352), True),  # an enlargement: OpenCV on the uint8 frame
    ((432, 768), (300, 560), True),  # an antialiased shrink: the float path
])
def test_letterbox_windows_are_the_padded_input_cut(src, dst, antialias):
    """What CenterFace's windows (pipeline/changes.py) run: windows of any sizes,
    some reaching into the zero padding past the scaled frame, with the same
    values as cutting them out of the whole padded input."""
    from models.centerface import _aligned
    from models.tiling import Tile

    frame = frames(*src, n=1)[0]
    canvas = (_aligned(dst[0]), _aligned(dst[1]))
    tiles = [Tile(0, 0, 64, 32), Tile(canvas[1] - 96, canvas[0] - 64, 96, 64),
             Tile(32, 96, 160, 128)]
    got = resize.letterbox_windows(frame, *dst, tiles, antialias=antialias)
    whole = letterbox_frames(frame[None], *dst, canvas=canvas, antialias=antialias)
    for t, x in zip(tiles, got, strict=True):
        assert x.shape == (1, 3, t.height, t.width) and x.dtype == torch.float32
        assert torch.equal(x[0], t.crop(whole[0]))
