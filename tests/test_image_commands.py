"""`anonymize faces` and `anonymize images` on a real image folder."""

import pickle

import numpy as np
import pytest

from anonymize.cli import main
from pipeline.datasets import read_image

pytestmark = pytest.mark.models


def test_faces_writes_research_pickle_and_blurs(data_dir, tmp_path, checkpoint):
    checkpoint("retinaface-mobilenet0.25")
    frames = data_dir / "faces_dlib_examples" / "images"
    assert main(["faces", "--frames-dir", str(frames), "--save-dir", str(tmp_path),
                 "--quiet", "--device", "cpu"]) == 0
    faces = pickle.loads((tmp_path / "faces.pkl").read_bytes())
    assert len(faces) == 9 and sum(len(v["bbox"]) for v in faces.values()) >= 40
    name, entry = next(iter(faces.items()))
    assert set(entry) == {"frame_idx", "face_id", "image_path", "bbox", "confidence"}
    assert name.endswith(".jpg") and entry["image_path"] == [name] * len(entry["bbox"])
    # the first face region of that frame lost its detail
    src = read_image(name)
    out = read_image(tmp_path / name.rsplit("/", 1)[-1])
    x1, y1, x2, y2 = (int(v) for v in entry["bbox"][0])
    assert out[y1:y2, x1:x2].std() < src[y1:y2, x1:x2].std()
    assert np.array_equal(out.shape, src.shape)


def test_images_writes_imageai_detections(data_dir, tmp_path, checkpoint):
    for name in ("retinaface-mobilenet0.25", "plate-yolov8n-pyplatex"):
        checkpoint(name)
    folder = data_dir / "faces_dlib_examples" / "images"
    assert main(["images", "--img-dir", str(folder), "--out-dir", str(tmp_path), "--quiet",
                 "--plates", "one-stage", "--device", "cpu"]) == 0
    rows = pickle.loads((tmp_path / "detections.pkl").read_bytes())
    assert len(rows) == 9 and all(set(r) == {"filename", "det"} for r in rows)
    det = next(d for r in rows for d in r["det"])
    assert set(det) == {"name", "percentage_probability", "box_points"}
    assert 0 <= det["percentage_probability"] <= 100
    assert len(list(tmp_path.glob("*.jpg"))) == 9
