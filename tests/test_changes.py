"""Looking again only where the picture changed (pipeline/changes.py)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from models.detections import CAR, FACE, PLATE, Detections
from pipeline.changes import (
    BLOCK,
    MARGIN_BLOCKS,
    THRESHOLD,
    WINDOW_SCORE,
    changed_blocks,
    detect_group,
    examined_blocks,
    grey,
    join_kept,
    regions,
    touching,
)
from pipeline.settings import Settings

H, W = 232, 392  # neither a multiple of BLOCK: the last row and column of blocks are partial
GRID = (-(-H // BLOCK), -(-W // BLOCK))


def still(seed: int = 0) -> np.ndarray:
    """A textured picture with compression-like noise of a few grey levels."""
    rng = np.random.default_rng(seed)
    base = np.tile(np.linspace(40, 200, W, dtype=np.float32), (H, 1))
    noise = rng.integers(-3, 4, (H, W))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def test_noise_alone_changes_nothing():
    assert not changed_blocks(still(1), still(2)).any()


def test_a_changed_patch_marks_its_blocks_and_their_neighbours():
    ref, frame = still(), still()
    frame[40:52, 70:90] = 255  # within block rows 2-3, columns 4-5
    blocks = changed_blocks(frame, ref)
    assert blocks.shape == GRID
    rows, cols = np.nonzero(blocks)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (1, 4, 3, 6)


def test_a_change_in_a_partial_edge_block_counts():
    ref, frame = still(), still()
    frame[-8:, -8:] = 0  # the bottom row of blocks holds 8 pixel rows, the last column 8
    assert changed_blocks(frame, ref)[-1, -1]
    # averaged over the 8×8 pixels the frame has there, not over a whole block
    frame2 = still()
    frame2[-8:, -8:] = np.clip(ref[-8:, -8:].astype(int) + int(THRESHOLD) + 4, 0, 255)
    assert changed_blocks(frame2, ref)[-1, -1]


def test_slight_drift_below_the_threshold_is_no_change():
    ref = still()
    frame = np.clip(ref.astype(int) + int(THRESHOLD) - 2, 0, 255).astype(np.uint8)
    assert not changed_blocks(frame, ref).any()


def test_regions_nothing_changed_is_no_region():
    assert regions(np.zeros(GRID, bool), W, H) == []


def test_a_region_holds_the_change_with_context():
    changed = np.zeros(GRID, bool)
    changed[3, 6] = True
    (rect,) = regions(changed, W, H)
    m = MARGIN_BLOCKS * BLOCK
    assert rect == (6 * BLOCK - m, 3 * BLOCK - m, 7 * BLOCK + m, 4 * BLOCK + m)


def test_a_reference_box_touching_a_change_is_searched_whole():
    """A face whose mouth moves changes a few blocks; its whole box (and context)
    must be searched again, or the networks would see only a mouth."""
    changed = np.zeros(GRID, bool)
    changed[5, 5] = True
    face = Detections([[40, 20, 100, 95]], [0.9], [FACE])
    far = Detections([[300, 2, 320, 12]], [0.9], [PLATE])
    assert touching(Detections.merge([face, far]), changed).tolist() == [True, False]
    examined = examined_blocks(changed, Detections.merge([face, far]))
    assert examined[20 // BLOCK:95 // BLOCK + 1, 40 // BLOCK:100 // BLOCK + 1].all()
    assert examined.sum() == (95 // BLOCK + 1 - 20 // BLOCK) * (100 // BLOCK + 1 - 40 // BLOCK)
    (rect,) = regions(examined, W, H)
    x0, y0, x1, y1 = rect
    assert x0 <= 40 - BLOCK and y0 <= 20 - BLOCK and x1 >= 100 + BLOCK and y1 >= 95 + BLOCK
    assert x1 < 300  # the untouched plate is not searched again


def test_overlapping_regions_are_joined_and_large_ones_mean_the_whole_frame():
    changed = np.zeros(GRID, bool)
    changed[2, 2] = changed[2, 7] = True  # margins overlap: one region
    assert len(regions(changed, W, H)) == 1
    changed[:, :GRID[1] * 3 // 5] = True
    assert regions(changed, W, H) is None


def test_kept_boxes_grow_overlapping_new_ones_and_vehicles_are_the_new_ones():
    found = Detections([[10, 10, 30, 30], [50, 50, 150, 100]], [0.8, 0.9], [FACE, CAR])
    kept = Detections([[12, 8, 32, 28], [100, 10, 120, 20], [0, 0, 5, 5]], [0.7, 0.6, 0.9],
                      [FACE, PLATE, CAR])
    out = join_kept(found, kept, 0.5)
    faces, plates, cars = (out.with_class(c) for c in (FACE, PLATE, CAR))
    assert faces.xyxy.tolist() == [[10, 8, 32, 30]]
    assert plates.xyxy.tolist() == [[100, 10, 120, 20]]
    assert cars.xyxy.tolist() == [[50, 50, 150, 100]]


class RecordingStack:
    """Finds bright squares (value 255) as faces; records what it was asked."""

    def __init__(self):
        self.settings = Settings()
        self.whole: list[int] = []  # frame ids (top-left pixel) detected whole
        self.rects: list[list] = []

    @staticmethod
    def _find(img) -> Detections:
        mask = (img[..., 0] == 255).astype(np.uint8)
        n, _, stats, _ = cv2.connectedComponentsWithStats(mask)
        return Detections([[x, y, x + w, y + h] for x, y, w, h, _ in stats[1:n]],
                          [0.9] * (n - 1), [FACE] * (n - 1))

    def on_lanes(self, fn, items):
        return [fn(i) for i in items]

    def detect(self, frames, vehicles=True):
        self.whole += [int(f[0, 0, 1]) for f in frames]
        return [self._find(f) for f in frames]

    def detect_regions(self, frame, rects, vehicles=True):
        self.rects.append(list(rects))
        return Detections.merge([self._find(frame[y0:y1, x0:x1]).shifted(x0, y0)
                                 for x0, y0, x1, y1 in rects])


def frame(idx: int, squares) -> np.ndarray:
    img = np.repeat(still()[..., None], 3, axis=2)
    img[0, 0, 1] = idx  # the frame's id, too small a change to matter
    for x, y in squares:
        img[y:y + 16, x:x + 16] = 255
    return img


def test_a_group_looks_again_only_where_it_changed_and_keeps_the_rest():
    stack = RecordingStack()
    static, moving = (150, 30), [(20, 60), (24, 60), (28, 60)]
    frames = [frame(i, [static, moving[i]]) for i in range(3)]
    out = detect_group(stack, frames)
    assert stack.whole == [0]  # only the reference is detected whole
    assert len(stack.rects) == 2
    for rects in stack.rects:
        (x0, y0, x1, y1), = rects  # the moving square only, with context
        assert x0 <= 20 and x1 >= 44 and x1 < 150
    for i, d in enumerate(out[1:], start=1):
        x, y = moving[i]
        assert [x, y, x + 16, y + 16] in d.xyxy.tolist()


def test_a_group_keeps_static_reference_boxes_and_drops_moved_ones():
    stack = RecordingStack()
    ref = frame(0, [(150, 30)])
    later = frame(1, [(150, 30)])
    later[80:100, 20:40] = 0  # something else changed far away
    out = detect_group(stack, [ref, later])
    assert out[1].xyxy.tolist() == [[150, 30, 166, 46]]  # kept: nothing changed there
    moved = frame(1, [(150, 34)])  # the square moved: its old box touches the change
    stack = RecordingStack()
    out = detect_group(stack, [ref, moved])
    assert out[1].xyxy.tolist() == [[150, 34, 166, 50]]  # found again, the old box dropped


def test_frames_unchanged_since_the_reference_keep_its_boxes_without_any_search():
    """Not one block changed: no network runs, not even the vehicles', and the
    frame keeps every detection of the frame before, vehicles included."""

    class WithCar(RecordingStack):
        def detect(self, frames, vehicles=True):
            car = Detections([[10, 100, 90, 150]], [0.7], [CAR])
            return [Detections.merge([d, car]) for d in super().detect(frames, vehicles)]

    stack = WithCar()
    frames = [frame(i, [(150, 30)]) for i in range(4)]
    out = detect_group(stack, frames)
    assert stack.whole == [0] and stack.rects == []
    assert all(d == out[0] for d in out) and len(out[0].with_class(CAR)) == 1


def test_a_frame_changed_all_over_is_detected_whole():
    stack = RecordingStack()
    cut = frame(1, [(40, 40)])
    cut[..., :] = 255 - cut  # another shot
    cut[0, 0, 1] = 1
    detect_group(stack, [frame(0, []), cut])
    assert stack.whole == [0, 1]


def test_a_moving_object_is_searched_where_it_is_not_where_it_was_at_the_reference():
    """Blocks are compared with what the networks last examined there: once a
    region covered the square's old place, the background it left is the
    picture there, and later frames search only around the square's way on."""
    stack = RecordingStack()
    xs = [20, 70, 120, 170, 220]
    out = detect_group(stack, [frame(i, [(x, 100)]) for i, x in enumerate(xs)])
    assert stack.whole == [0]
    for i, rects in enumerate(stack.rects, start=1):
        lo = min(x0 for x0, _, _, _ in rects)
        assert lo > xs[i - 1] - 3 * BLOCK - BLOCK, (i, rects)  # nothing left of the last place
        assert any(x0 <= xs[i] and x1 >= xs[i] + 16 for x0, _, x1, _ in rects)
        assert out[i].xyxy.tolist() == [[xs[i], 100, xs[i] + 16, 116]]


def test_slow_drift_is_searched_once_it_adds_up():
    stack = RecordingStack()
    frames = []
    for i in range(3):
        img = frame(i, [])
        img[96:160, 96:160] = np.clip(img[96:160, 96:160].astype(int) + 4 * i, 0, 255)
        frames.append(img)
    detect_group(stack, frames)
    # 4 grey levels since the reference: noise, no search; 8: looked at again
    assert len(stack.rects) == 1 and stack.rects[0]


def test_grey_is_one_channel_of_the_frame_size():
    assert grey(frame(0, [])).shape == (H, W)


# -- windows of a network input ------------------------------------------------------


def test_windows_lie_on_the_network_grid_and_join_when_they_overlap():
    from models.tiling import Tile, join_overlapping, windows

    # a frame scaled ×1.5 onto a 1152×672 canvas
    (t,) = windows([(100, 50, 140, 90)], (1.5, 1.5), (0, 0), (672, 1152), 32)
    assert t == Tile(128, 64, 96, 96)  # 150..210 -> 128..224, 75..135 -> 64..160
    # a letterbox offset moves the window; the canvas clips it
    (t,) = windows([(700, 400, 768, 432)], (1.25, 1.25), (0, 2), (544, 960), 32)
    assert (t.x0, t.y0, t.x0 + t.width, t.y0 + t.height) == (864, 480, 960, 544)
    both = windows([(0, 0, 40, 40), (30, 30, 80, 80), (300, 300, 320, 320)], (1, 1), (0, 0),
                   (480, 640), 32)
    assert [(t.x0, t.y0, t.width, t.height) for t in both] == [(0, 0, 96, 96), (288, 288, 32, 32)]
    assert join_overlapping([(0, 0, 10, 10), (10, 0, 20, 10)]) == [(0, 0, 10, 10), (10, 0, 20, 10)]


@pytest.fixture(scope="module")
def street(data_dir):
    """A 960×540 street photo with plates, three annotated faces pasted in."""
    from pipeline.datasets import load_annotations, read_image

    photo = sorted((data_dir / "plates_vehicles_openimages_roboflow" / "images").iterdir())[1]
    frame = np.ascontiguousarray(cv2.resize(read_image(photo), (960, 540),
                                            interpolation=cv2.INTER_AREA))
    spots = iter([(60, 330), (420, 360), (780, 300)])
    for rec in load_annotations(data_dir / "faces_dlib_examples"):
        img = read_image(rec.path)
        for gt in rec.pixel_boxes(img.shape[1], img.shape[0]):
            x1, y1, x2, y2 = (int(v) for v in gt.xyxy)
            if x2 - x1 < 60:
                continue
            spot = next(spots, None)
            if spot is None:
                return frame
            patch = cv2.resize(img[max(0, y1 - 20):y2 + 20, max(0, x1 - 20):x2 + 20], (80, 90))
            x, y = spot
            frame[y:y + 90, x:x + 80] = patch
    pytest.fail("fewer than three large faces in the dlib examples")


@pytest.mark.slow
def test_windows_see_what_the_whole_frame_shows_there(street):
    """The default networks on windows of their inputs: windows covering the
    whole input find exactly what the whole frame gives; regions around each
    face and plate, with context, find each of them again."""
    from models.detections import FACE, PLATE
    from pipeline.detect import DetectionStack

    s = Settings(device="cpu", threads=1)
    stack = DetectionStack.from_settings(s)
    h, w = street.shape[:2]
    for det, thresh, size in ((stack.face_detector, s.face_thresh, None),
                              (stack.plate_detector, s.lp_thresh, s.plate_size)):
        whole = det.detect([street], thresh, size=size)[0]
        everything = det.detect_windows(street, [(0, 0, w, h)], thresh, size)
        assert len(whole) > 0
        assert np.allclose(everything.xyxy, whole.xyxy, atol=0.01)
        assert np.allclose(everything.confidence, whole.confidence, atol=1e-4)
    whole = stack.detect([street], vehicles=False)[0].with_class(FACE, PLATE)
    assert whole.with_class(FACE).xyxy.shape[0] >= 3
    changed = np.zeros((-(-h // BLOCK), -(-w // BLOCK)), bool)
    for x0, y0, x1, y1 in whole.xyxy:
        changed[int(y0) // BLOCK:-(-int(y1) // BLOCK), int(x0) // BLOCK:-(-int(x1) // BLOCK)] = True
    rects = regions(examined_blocks(changed, whole), w, h)
    assert rects and sum((x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in rects) < w * h / 2
    asked = []  # a window keeps boxes at WINDOW_SCORE of the whole frame's threshold
    for det in (stack.face_detector, stack.plate_detector):
        def spy(frame, rects, thresh, *args, _real=det.detect_windows, **kw):
            asked.append(thresh)
            return _real(frame, rects, thresh, *args, **kw)
        det.detect_windows = spy
    again = stack.detect_regions(street, rects, vehicles=False)
    assert asked == pytest.approx([s.face_thresh * WINDOW_SCORE]
                                  + [s.lp_thresh * WINDOW_SCORE] * len(s.plate_sizes))
    from models.boxes import box_iou_np

    for label in (FACE, PLATE):
        a, b = whole.with_class(label), again.with_class(label)
        strong = a[a.confidence >= 0.2]  # boxes near the threshold may come and go
        assert len(strong) and (box_iou_np(strong.xyxy, b.xyxy).max(axis=1) > 0.8).all(), label


def test_a_frame_of_another_size_is_detected_whole():
    stack = RecordingStack()
    small = np.ascontiguousarray(frame(1, [(40, 40)])[:200, :300])
    detect_group(stack, [frame(0, [(40, 40)]), small])
    assert stack.whole == [0, 1] and stack.rects == []
