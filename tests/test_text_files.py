"""The project's own text files (JSON, YAML, its model sources) are UTF-8
whatever the locale says.

Why: Python's default text encoding follows the C locale, which is ASCII in
a bare container started with ``PYTHONUTF8=0`` and which native libraries
may switch for a moment while another thread reads a file (loading the
detectors on threads once hit ``'ascii' codec can't decode`` in the graph
cache's fingerprint of models/centerface.py). Each read here names its
encoding.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = textwrap.dedent("""
    import json, locale, sys
    from pathlib import Path
    tmp = Path(sys.argv[1])
    assert locale.getpreferredencoding(False).upper() in ("ANSI_X3.4-1968", "ASCII"), \\
        locale.getpreferredencoding(False)

    from models.graph_export import _class_sources
    from models.centerface import CenterFaceDetector
    source = Path(sys.modules[CenterFaceDetector.__module__].__file__)
    assert any(ord(c) > 127 for c in source.read_bytes().decode("utf-8"))
    assert "CenterFaceDetector" in _class_sources(str(source), 0)

    from pipeline.settings import read_config
    (tmp / "c.yaml").write_bytes("# seuil réglé à 0,3 × 2\\nface_thresh: 0.3\\n".encode())
    assert read_config(tmp / "c.yaml") == {"face_thresh": 0.3}

    from pipeline.datasets import load_annotations
    doc = {"license": "CC BY 4.0 © Ünïcode", "images": [
        {"file": "photo-é.jpg", "boxes": [{"label": "face", "xyxy": [1, 2, 3, 4]}]}]}
    (tmp / "annotations.json").write_bytes(json.dumps(doc, ensure_ascii=False).encode())
    # the photo's name on disk is its UTF-8 bytes, which this locale cannot spell
    open(bytes(tmp) + "/photo-é.jpg".encode("utf-8"), "wb").close()
    (record,) = load_annotations(tmp)
    assert record.name == "photo-é.jpg" and record.boxes[0].label == "face"
    assert record.path.is_file()
    print("ok")
""")


def test_project_files_read_as_utf8_under_an_ascii_locale(tmp_path):
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0",
           "PYTHONCOERCECLOCALE": "0", "PYTHONPATH": str(ROOT)}
    script = tmp_path / "check.py"  # a file: Python reads sources as UTF-8, argv by locale
    script.write_text(SCRIPT, encoding="utf-8")
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, encoding="utf-8", timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith("ok")
