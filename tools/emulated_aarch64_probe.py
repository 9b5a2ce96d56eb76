"""Runs detect -> align -> embed on a few images and prints the figures as one JSON object.

Run by tools/emulated_aarch64_check.py twice: once with the host's Python (x86_64) and once with an
arm64 Python under qemu-user, with the same code and model files. Standard library + edgeface only,
so that both interpreters run exactly this file.

    python tools/emulated_aarch64_probe.py IMAGE [IMAGE ...]
"""

from __future__ import annotations

import hashlib
import json
import platform
import sys
import time


def main(paths: list[str]) -> int:
    import numpy as np
    import onnxruntime

    from edgeface.config import RecognitionConfig
    from edgeface.io.images import read_image
    from edgeface.vision.analyzer import FaceAnalyzer
    from edgeface.vision.embed import Embedder

    started = time.perf_counter()
    recognition = RecognitionConfig()
    fp32 = FaceAnalyzer.from_config(recognition, precision="fp32")
    int8 = Embedder(precision="int8")  # runs the INT8 self-check on this CPU when it loads
    images = []
    for path in paths:
        image = read_image(path)
        faces = fp32.analyze(image)
        images.append(
            {
                "path": path,
                "pixels_sha256": hashlib.sha256(image.tobytes()).hexdigest(),
                "boxes": faces.detections.xyxy.astype(float).tolist(),
                "keypoints": faces.detections.kps.astype(float).tolist(),
                "chips_sha256": hashlib.sha256(faces.chips.tobytes()).hexdigest(),
                "fp32": faces.embeddings.astype(float).tolist(),
                "int8": int8.embed(faces.chips).astype(float).tolist() if int8.precision == "int8" else None,
            }
        )
    try:  # what the CPU offers, as numpy detected it at run time (HWCAP on ARM)
        from numpy._core._multiarray_umath import __cpu_features__ as features
    except ImportError:
        features = {}
    result = {
        "machine": platform.machine(),
        "arm_dotprod": features.get("ASIMDDP"),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "onnxruntime": onnxruntime.__version__,
        "int8_precision": int8.precision,
        "int8_selfcheck_distance": int8.selfcheck_distance,
        "seconds": round(time.perf_counter() - started, 2),
        "images": images,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    if len(sys.argv) < 2:
        print("usage: emulated_aarch64_probe.py IMAGE [IMAGE ...]", file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1:]))
