"""The gallery commands of `edgeface`: enroll, gallery list|show|rename|remove|export|import|upgrade|reject,
identify. `register(subparsers)` adds them to the main parser (edgeface/cli.py).

The gallery file is --gallery FILE, else $EDGEFACE_GALLERY, else ./gallery.db. Commands that only
read refuse a path where no gallery exists instead of creating an empty one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from edgeface.storage.paths import DEFAULT_GALLERY, GALLERY_ENV, default_gallery_path
from edgeface.text import plural


def _common(parser: argparse.ArgumentParser, config: bool = False) -> None:
    parser.add_argument("--gallery", type=Path, default=None,
                        help=f"gallery file (default: ${GALLERY_ENV}, else ./{DEFAULT_GALLERY})")
    if config:
        parser.add_argument("--config", type=Path, help="YAML or JSON config file (defaults apply without it)")


def _open(args: argparse.Namespace, create: bool = False, read_only: bool = False):
    from edgeface.storage.gallery import Gallery

    kwargs: dict[str, Any] = {"read_only": read_only} if read_only else {}
    if getattr(args, "max_distance", None) is not None:
        kwargs["match_max_distance"] = args.max_distance
    elif hasattr(args, "config"):  # the config's threshold (gallery.false_alarm_rate or match_max_distance)
        from edgeface.config import load_config
        from edgeface.recognition.false_alarm import MatchThreshold

        kwargs["match_max_distance"] = MatchThreshold.from_config(load_config(args.config))
    return Gallery(args.gallery or default_gallery_path(), create=create, **kwargs)


def _analyzer(args: argparse.Namespace):
    """The photo commands' analyzer (identify)."""
    from edgeface.config import load_config
    from edgeface.vision.analyzer import FaceAnalyzer

    return FaceAnalyzer.from_config(load_config(args.config).recognition)


def _keeps_face_crops(args: argparse.Namespace) -> bool:
    """clusters.store_face_crops: whether face images (crops, SFace chips) may be stored."""
    from edgeface.config import load_config

    return load_config(args.config).clusters.store_face_crops


def _camera_analyzer(args: argparse.Namespace):
    """The camera loop's models (enroll, reject): templates and negatives come from the chips the camera's
    probes come from."""
    from edgeface.config import load_config
    from edgeface.vision.analyzer import FaceAnalyzer

    return FaceAnalyzer.for_camera(load_config(args.config))


# -- enroll ----------------------------------------------------------------------------------


def _cmd_enroll(args: argparse.Namespace) -> int:
    from tqdm import tqdm  # type: ignore[import-untyped]

    from edgeface.storage.enroll import (
        Enroller,
        EnrollmentError,
        PhotoOutcome,
        person_folders,
        prepare_requests,
    )

    unreadable: list[str] = []
    if args.from_folders is not None:
        if args.name is not None:
            raise EnrollmentError("give either NAME PATH... or --from-folders DIR, not both")
        people, skipped = person_folders(args.from_folders)
        for folder in skipped:
            print(f"skipped {folder}: folders starting with '.' or '_' are not people", file=sys.stderr)
        requests = []
        for name, folder in people:  # one unreadable or badly named folder must not stop the others
            problem = _folder_problem(name, folder)
            if problem is None:
                requests.append((name, [folder]))
            else:
                print(f"skipped {_printable(folder)}: {problem}", file=sys.stderr)
                unreadable.append(_printable(folder))
    elif args.name is None or not args.paths:
        raise EnrollmentError("give NAME and at least one photo or folder (or --from-folders DIR)")
    else:
        requests = [(args.name, args.paths)]
    path = args.gallery or default_gallery_path()
    existed = path.exists()
    enrolled: dict[str, int] = {}
    if existed:
        with _open(args) as gallery:
            enrolled = {info.name: info.template_count for info in gallery.list_identities()}
    prepared = prepare_requests(requests, enrolled, add=args.add)  # every user error before anything is written
    if not prepared:
        raise EnrollmentError(f"{args.from_folders}: no person folder could be read; nothing was written")
    analyzer = _camera_analyzer(args)
    written = 0
    failed: list[str] = []
    photos = sum(len(files) for _, files in prepared)
    # Results on stdout (JSON lines with --jsonl, whereupon the per-person and summary lines go to stderr),
    # the progress bar on stderr. Every line goes through the bar, which clears itself before a line is
    # written and redraws itself below it, so nothing is printed over it in a terminal.
    lines = sys.stderr if args.jsonl else sys.stdout
    bar = tqdm(total=photos, unit="photo", file=sys.stderr, disable=args.jsonl or not sys.stderr.isatty(),
               leave=False)
    with _open(args, create=True) as gallery, bar:
        enroller = Enroller(analyzer, gallery, keep_chips=_keeps_face_crops(args))

        def report(outcome: PhotoOutcome) -> None:
            if outcome.accepted:  # reported once committed: "enrolled" must mean it is in the gallery
                pending.append(outcome)
            else:
                show(outcome)

        def show(outcome: PhotoOutcome) -> None:
            if args.jsonl:
                print(json.dumps({"name": outcome.name, "path": str(outcome.path), "enrolled": outcome.accepted,
                                  "reason": outcome.reason.value if outcome.reason else None,
                                  "detail": outcome.detail or None,
                                  "quality": None if outcome.quality is None else round(outcome.quality, 3),
                                  "warning": outcome.warning},
                                 ensure_ascii=False), flush=True)
            elif outcome.accepted:
                warning = f"  warning: {outcome.warning}" if outcome.warning else ""
                bar.write(f"enrolled  {outcome.name}  {outcome.path}  (quality {outcome.quality:.2f}){warning}", file=sys.stdout)
            else:
                reason = outcome.reason.value if outcome.reason else "?"
                bar.write(f"rejected  {outcome.name}  {outcome.path}  {reason}: {outcome.detail}",
                          file=sys.stdout)
            bar.update(1)

        accepted = 0
        for name, files in prepared:
            pending: list[PhotoOutcome] = []
            plan = enroller.examine(name, files, report)
            committed = enroller.commit(plan)
            for outcome in pending:
                show(outcome)
            if committed:
                written += 1
                accepted += len(plan.accepted)
                bar.write(f"{name}: {len(plan.accepted)} of {plural(len(plan.outcomes), 'photo')} enrolled", file=lines)
            else:
                failed.append(name)
                bar.write(f"{name}: no usable photo, not enrolled", file=lines)
    requested = len(prepared)
    summary = f"{written} of {plural(requested, 'person', 'people')} enrolled ({accepted} of {plural(photos, 'photo')})"
    if failed:
        shown = ", ".join(failed[:5]) + (f" and {len(failed) - 5} more" if len(failed) > 5 else "")
        summary += f"; not enrolled, no usable photo: {shown}"
    if unreadable:
        summary += f"; skipped, unreadable: {', '.join(unreadable)}"
    if requested > 1 or failed or unreadable:
        print(summary, file=lines)
    if not existed and not written:
        _remove_gallery_file(path)
    return 1 if failed or unreadable else 0


def _printable(path: Path) -> str:
    """A path as text that can be printed, whatever bytes its name holds (undecodable ones escaped)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _folder_problem(name: str, folder: Path) -> str | None:
    """Why a person folder of --from-folders cannot be enrolled (its name, its permissions), or None."""
    from edgeface.errors import EdgefaceError
    from edgeface.storage.gallery import validate_name

    try:
        validate_name(name)
    except EdgefaceError as error:
        if any(0xDC80 <= ord(c) <= 0xDCFF for c in name):
            return "its name is not valid UTF-8; rename the folder to the person's name"
        return str(error)
    try:
        next(os.scandir(folder), None)
    except OSError as error:
        return f"cannot read the folder ({error.strerror or error}); check its permissions"
    return None


def _remove_gallery_file(path: Path) -> None:
    """Leave no empty gallery behind when a command that created it wrote nothing."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


# -- gallery management ----------------------------------------------------------------------


def _info_dict(info, templates: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"name": info.name, "created": info.created, "metadata": info.metadata,
                           "templates": info.template_count, "negatives": info.negative_count}
    if templates:
        out["templates"] = [{"id": t.id, "quality": round(t.quality, 3), "source_sha256": t.source_sha256,
                             "created": t.created, "model_id": t.model_id, "second_model": t.second_model}
                            for t in info.templates]
    return out


def _cmd_list(args: argparse.Namespace) -> int:
    with _open(args, read_only=True) as gallery:
        identities = gallery.list_identities()
    if args.json:
        print(json.dumps([_info_dict(i) for i in identities], ensure_ascii=False))
    else:
        for info in identities:
            print(f"{info.name}\t{plural(info.template_count, 'template')}\t{plural(info.negative_count, 'negative')}"
                  f"\tsince {info.created}")
        print(plural(len(identities), "identity", "identities"), file=sys.stderr)
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    with _open(args, read_only=True) as gallery:
        info = gallery.show(args.name)
    if args.json:
        print(json.dumps(_info_dict(info, templates=True), ensure_ascii=False))
        return 0
    print(f"{info.name}: {plural(info.template_count, 'template')}, {plural(info.negative_count, 'negative')}, "
          f"since {info.created}")
    if info.metadata:
        print(f"metadata: {json.dumps(info.metadata, ensure_ascii=False)}")
    for t in info.templates:
        models = t.model_id + (f" + {t.second_model}" if t.second_model else " only")
        print(f"  template {t.id}\tquality {t.quality:.2f}\t{models}\t{t.created}\tsource sha256 {t.source_sha256 or '-'}")
    return 0


def _cmd_rename(args: argparse.Namespace) -> int:
    with _open(args) as gallery:
        gallery.rename(args.old, args.new)
    print(f"renamed {args.old} to {args.new}", file=sys.stderr)
    return 0


def _cmd_remove(args: argparse.Namespace) -> int:
    with _open(args) as gallery:
        gallery.remove(args.name)
    print(f"removed {args.name}", file=sys.stderr)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    with _open(args, read_only=True) as gallery:
        identities, templates = gallery.export_to(args.file)
    print(f"exported {plural(identities, 'identity', 'identities')}, {plural(templates, 'template')} to {args.file}",
          file=sys.stderr)
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    path = args.gallery or default_gallery_path()
    existed = path.exists()
    try:
        with _open(args, create=True) as gallery:
            report = gallery.import_from(args.file)
    except Exception:
        if not existed:
            _remove_gallery_file(path)
        raise
    print(f"imported {report.identities_created} new and {report.identities_merged} existing "
          f"{'identity' if report.identities_created + report.identities_merged == 1 else 'identities'}: "
          f"{plural(report.templates_added, 'template')} added, {report.templates_skipped} already present, "
          f"{plural(report.negatives_added, 'negative')}", file=sys.stderr)
    return 0


def _cmd_upgrade(args: argparse.Namespace) -> int:
    """Add the missing second-opinion (SFace) embeddings: from the chips stored with the templates, else
    from the very photos the templates were made from (found by their sha256 under --photos)."""
    import numpy as np

    from edgeface.config import load_config
    from edgeface.errors import EdgefaceError
    from edgeface.storage.gallery import SecondTemplate
    from edgeface.vision.sface import SFACE_MODEL_ID

    config = load_config(args.config)
    if config.recognition.second_opinion == "off":
        raise EdgefaceError("recognition.second_opinion is off in this config: there is no second model to upgrade to")
    if args.photos is not None and not args.photos.is_dir():
        raise EdgefaceError(f"--photos {args.photos}: not a folder (give the enrollment photos, one sub-folder per person)")
    with _open(args) as gallery:
        missing = gallery.templates_without_second(SFACE_MODEL_ID)
        if not missing:
            print("every template has its SFace embedding; nothing to do", file=sys.stderr)
            return 0
        from edgeface.vision.analyzer import FaceAnalyzer

        analyzer = FaceAnalyzer.for_camera(config)  # the chips enrollment makes
        second = analyzer.second
        assert second is not None
        found: list[tuple[int, SecondTemplate]] = []
        chips = [m for m in missing if m.chip is not None]
        if chips:
            vectors = second.embed(np.stack([m.chip for m in chips if m.chip is not None]))
            found += [(m.template_id, SecondTemplate(SFACE_MODEL_ID, second.model_version, v, m.chip))
                      for m, v in zip(chips, vectors)]
        if args.photos is not None:
            found += _second_from_photos(args.photos, [m for m in missing if m.chip is None], analyzer)
        if not config.clusters.store_face_crops:  # the embeddings only: no face image is kept
            found = [(t, SecondTemplate(s.model_id, s.model_version, s.embedding)) for t, s in found]
        added = gallery.add_second_embeddings(found) if found else 0
        done = {t for t, _ in found}
        need_photo = sorted({m.name for m in missing if m.template_id not in done} - _people_with_second(gallery))
    print(f"added {plural(added, 'SFace embedding')} ({len({m.name for m in missing if m.template_id in done})} "
          f"of {plural(len({m.name for m in missing}), 'person', 'people')} without one)", file=sys.stderr)
    if need_photo:
        hint = "" if args.photos is not None else "pass --photos DIR (the enrollment photos, one folder per person) or "
        print(f"{plural(len(need_photo), 'person', 'people')} still decided by dlib alone (enrolled before chips were "
              f"kept): {', '.join(need_photo)}; {hint}add a new photo (`edgeface enroll --add NAME PHOTO`)", file=sys.stderr)
        return 1
    return 0


def _second_from_photos(root: Path, missing: list[Any], analyzer: Any) -> list[tuple[int, Any]]:
    """SFace embeddings of the templates whose source photo (same sha256) is under root/NAME/."""
    import hashlib

    import numpy as np

    from edgeface.errors import ImageError
    from edgeface.io.images import IMAGE_SUFFIXES, decode_image
    from edgeface.storage.gallery import SecondTemplate

    wanted: dict[tuple[str, str], int] = {(m.name, m.source_sha256): m.template_id for m in missing if m.source_sha256}
    out = []
    for name in sorted({name for name, _ in wanted}):
        folder = root / name
        if not folder.is_dir():
            continue
        for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()):
            try:
                data = path.read_bytes()
            except OSError as error:
                print(f"edgeface: {path}: {error.strerror or error}; skipped", file=sys.stderr)
                continue
            template_id = wanted.pop((name, hashlib.sha256(data).hexdigest()), None)
            if template_id is None:
                continue
            try:
                faces = analyzer.analyze(decode_image(data, str(path)))
            except ImageError as error:
                print(f"{path}: {error}", file=sys.stderr)
                continue
            if len(faces) == 0 or faces.second_embeddings is None or faces.second_chips is None:
                continue
            k = int(np.argmax(faces.detections.area))  # enrollment took the dominant face
            out.append((template_id, SecondTemplate(analyzer.second.model_id, analyzer.second.model_version,
                                                    faces.second_embeddings[k], faces.second_chips[k])))
    return out


def _people_with_second(gallery: Any) -> set[str]:
    import numpy as np

    from edgeface.vision.sface import SFACE_MODEL_ID

    means = gallery.second_means(SFACE_MODEL_ID)
    return {name for name, row in zip(means.snapshot.names, means.means) if not np.isnan(row).any()}


def _cmd_reject(args: argparse.Namespace) -> int:
    from edgeface.errors import EdgefaceError
    from edgeface.io.images import read_image

    analyzer = _camera_analyzer(args)
    with _open(args) as gallery:
        gallery.show(args.name)  # an unknown name fails before the photo is analysed
        faces = analyzer.analyze(read_image(args.photo))
        if len(faces) == 0:
            raise EdgefaceError(f"{args.photo}: no face found; nothing was changed")
        matches = gallery.match(faces.embeddings, max_distance=2.0)
        candidates = [i for i, m in enumerate(matches) if m.name == args.name]
        if len(faces) > 1 and not candidates:
            raise EdgefaceError(f"{args.photo}: {plural(len(faces), 'face')} and none is nearest {args.name}; crop the photo")
        index = min(candidates or [0], key=lambda i: matches[i].distance)
        removed = gallery.reject_match(args.name, faces.embeddings[index])
    print(f"noted: the face in {args.photo} is not {args.name}"
          + (f"; removed their template {removed}, which alone matched it" if removed else ""), file=sys.stderr)
    return 0


# -- identify --------------------------------------------------------------------------------


def _tsv(value: object) -> str:
    r"""A TSV field: backslash, tab, newline and carriage return escaped as \\, \t, \n, \r (one line
    per face whatever a file name holds); undecodable bytes of a file name as \xNN."""
    text = _printable(value) if isinstance(value, Path) else str(value)
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def _cmd_identify(args: argparse.Namespace) -> int:
    from edgeface.config import load_config
    from edgeface.errors import ImageError
    from edgeface.io.images import read_image
    from edgeface.storage.second_opinion import match_with_second_opinion
    from edgeface.vision.sface import SFACE_MODEL_ID

    analyzer = _analyzer(args)
    config = load_config(args.config)
    margin = config.pipeline.decision.runner_up_margin
    mode = config.recognition.second_opinion
    errors = 0
    with _open(args, read_only=True) as gallery:  # identifying writes nothing: read access is enough
        for path in args.paths:
            record: dict[str, Any] = {"path": str(path), "faces": [], "error": None}
            try:
                faces = analyzer.analyze(read_image(path))
            except ImageError as error:
                record["error"] = str(error)
                errors += 1
            else:
                second = faces.second_embeddings
                if second is None or mode == "off":
                    matches = gallery.match(faces.embeddings)
                else:  # the second opinion, as the camera loop asks it (the photo analyzer embedded every face)
                    matches, _ = match_with_second_opinion(gallery, faces.embeddings, gallery.match_max_distance, mode,
                                                           SFACE_MODEL_ID, second.__getitem__)
                for i, match in enumerate(matches):
                    record["faces"].append({
                        "box": [round(float(v), 1) for v in faces.detections.xyxy[i]],
                        "name": match.name or "unknown",
                        "distance": round(match.distance, 4) if match.distance != float("inf") else None,
                        "nearest": match.nearest_name,
                        "runner_up": {"name": match.runner_up, "distance": round(match.runner_up_distance, 4)}
                        if match.close_runner_up(margin) else None,
                    })
            if args.jsonl:
                print(json.dumps(record, ensure_ascii=False), flush=True)
            elif record["error"]:
                print(f"edgeface: {record['error']}", file=sys.stderr)
            elif not record["faces"]:
                print(f"{_tsv(path)}\tno face")
            else:
                for face in record["faces"]:
                    distance = "-" if face["distance"] is None else f"{face['distance']:.3f}"
                    box = ",".join(f"{v:.0f}" for v in face["box"])
                    close = face["runner_up"]
                    look_alike = f"\trunner-up {_tsv(close['name'])} {close['distance']:.3f}" if close else ""
                    print(f"{_tsv(path)}\t{_tsv(face['name'])}\t{distance}\tbox {box}{look_alike}")
    return 1 if errors else 0


# -- registration ----------------------------------------------------------------------------


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `enroll`, `gallery ...` and `identify` to the `edgeface` command's sub-parsers."""
    enroll = subparsers.add_parser(
        "enroll", help="add people to the gallery from photos; every photo is reported enrolled or rejected",
        description="edgeface enroll NAME PATH... | edgeface enroll --from-folders DIR")
    enroll.add_argument("name", nargs="?", metavar="NAME", help="the person's name")
    enroll.add_argument("paths", nargs="*", type=Path, metavar="PATH", help="photos or folders (recursive)")
    enroll.add_argument("--from-folders", type=Path, metavar="DIR",
                        help="one sub-folder per person, named after them (folders starting with _ are skipped)")
    enroll.add_argument("--add", action="store_true", help="add photos to people already enrolled")
    enroll.add_argument("--jsonl", action="store_true", help="one JSON object per photo")
    _common(enroll, config=True)
    enroll.set_defaults(handler=_cmd_enroll)

    gallery = subparsers.add_parser("gallery", help="list, show, rename, remove, export, import people")
    actions = gallery.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="every identity with its number of templates")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=_cmd_list)
    show = actions.add_parser("show", help="one identity and its templates")
    show.add_argument("name", metavar="NAME")
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=_cmd_show)
    rename = actions.add_parser("rename", help="rename an identity")
    rename.add_argument("old", metavar="OLD")
    rename.add_argument("new", metavar="NEW")
    rename.set_defaults(handler=_cmd_rename)
    remove = actions.add_parser("remove", help="delete an identity with its templates")
    remove.add_argument("name", metavar="NAME")
    remove.set_defaults(handler=_cmd_remove)
    export = actions.add_parser("export", help="write embeddings and metadata (never photos) to a JSON file")
    export.add_argument("file", type=Path, metavar="FILE")
    export.set_defaults(handler=_cmd_export)
    importing = actions.add_parser("import", help="add identities from an export file (same model only)")
    importing.add_argument("file", type=Path, metavar="FILE")
    importing.set_defaults(handler=_cmd_import)
    upgrade = actions.add_parser("upgrade", help="add the second-opinion (SFace) embeddings a template lacks, from "
                                 "its stored chip; names the people who need a new photo")
    upgrade.add_argument("--photos", type=Path, metavar="DIR",
                         help="the enrollment photos, one sub-folder per person: templates without a stored chip are "
                         "embedded again from the photo they were made from (same sha256)")
    upgrade.set_defaults(handler=_cmd_upgrade)
    reject = actions.add_parser("reject", help="the face in PHOTO is not NAME: stop that mistake recurring")
    reject.add_argument("name", metavar="NAME")
    reject.add_argument("photo", type=Path, metavar="PHOTO")
    reject.set_defaults(handler=_cmd_reject)
    for parser, config in ((listing, False), (show, False), (rename, False), (remove, False), (export, False),
                           (importing, False), (upgrade, True), (reject, True)):
        _common(parser, config=config)

    identify = subparsers.add_parser("identify", help="name every face in photos, or 'unknown', with the distance")
    identify.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    identify.add_argument("--jsonl", action="store_true", help="one JSON object per photo")
    identify.add_argument("--max-distance", type=float,
                          help="match threshold (default: measured at FAR 0.1%% on LFW, see edgeface/storage/gallery.py)")
    _common(identify, config=True)
    identify.set_defaults(handler=_cmd_identify)
