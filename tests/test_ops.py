"""Box operations against plain reference implementations written here."""

import numpy as np
import pytest
import torch

from models.ops import batched_nms, box_iou, nms


def greedy_nms(boxes: np.ndarray, scores: np.ndarray, thresh: float) -> list[int]:
    """The textbook loop: take the best remaining box, drop all it overlaps."""
    def iou(a, b):
        w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = w * h
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
        return inter / union if union > 0 else 0.0

    remaining = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    kept = []
    while remaining:
        best = remaining.pop(0)
        kept.append(best)
        remaining = [i for i in remaining if iou(boxes[best], boxes[i]) <= thresh]
    return kept


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("thresh", [0.3, 0.5, 0.7])
def test_nms_equals_the_greedy_loop(seed, thresh):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 60))
    xy = rng.uniform(0, 100, (n, 2))
    wh = rng.uniform(5, 40, (n, 2))
    boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    scores = rng.uniform(0, 1, n).astype(np.float32)
    got = nms(torch.from_numpy(boxes), torch.from_numpy(scores), thresh).tolist()
    assert got == greedy_nms(boxes, scores, thresh)


def test_nms_suppression_chain():
    """A suppressed box must not suppress others: b is removed by a, so c stays."""
    boxes = torch.tensor([[0, 0, 10, 10], [4, 0, 14, 10], [8, 0, 18, 10]], dtype=torch.float32)
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert nms(boxes, scores, 0.3).tolist() == [0, 2]


def test_nms_empty_and_batched_by_class():
    assert nms(torch.zeros((0, 4)), torch.zeros(0), 0.5).tolist() == []
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10]], dtype=torch.float32)
    keep = batched_nms(boxes, torch.tensor([0.9, 0.8]), torch.tensor([0, 1]), 0.5)
    assert sorted(keep.tolist()) == [0, 1]


def test_box_iou_by_hand():
    a = torch.tensor([[0.0, 0, 10, 10]])
    b = torch.tensor([[5.0, 0, 15, 10], [20, 20, 30, 30]])
    assert torch.allclose(box_iou(a, b), torch.tensor([[50 / 150, 0.0]]))


def test_batched_nms_of_fp16_boxes_keeps_neighbours_of_a_high_class():
    """A detector on a GPU hands fp16 boxes to batched_nms. Offset by class 30 ×
    641 px they sat near 19 000, where fp16 steps by 16 px: two 10×20-px boxes
    4 px apart (IoU 0.43) became one box and the lower-scored one was
    suppressed. The same boxes in float32 keep both; fp16 must too."""
    boxes = torch.tensor([[100, 100, 110, 120], [104, 100, 114, 120], [630, 630, 640, 640]],
                         dtype=torch.float32)
    scores = torch.tensor([0.9, 0.8, 0.7])
    classes = torch.tensor([30, 30, 0])
    want = sorted(batched_nms(boxes, scores, classes, 0.5).tolist())
    assert want == [0, 1, 2]
    got = batched_nms(boxes.half(), scores.half(), classes, 0.5)
    assert sorted(got.tolist()) == want


def test_box_iou_of_fp16_frame_sized_boxes():
    """fp16 areas of 1080p boxes (2 M px) pass 65504: the IoU came out NaN."""
    a = torch.tensor([[0.0, 0, 1920, 1080]]).half()
    b = torch.tensor([[0.0, 0, 960, 1080], [0, 0, 1920, 1080]]).half()
    got = box_iou(a, b)
    assert torch.isfinite(got).all()
    assert torch.allclose(got.float(), torch.tensor([[0.5, 1.0]]), atol=1e-3)
