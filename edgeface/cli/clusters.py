"""The `edgeface clusters` commands (list | show ID | name ID NAME | merge A B | forget ID | sheet -o FILE)
and `edgeface eval cluster`. `register(subparsers)` adds `clusters` to the main parser and
`add_eval_cluster(eval_subparsers)` adds `cluster` under `edgeface eval` (edgeface/cli/main.py wires both).

The clusters live in the gallery file: --gallery FILE, else $EDGEFACE_GALLERY, else ./gallery.db.
name, merge and forget also queue their event in the file; the station process publishes it
(ClusterStore.take_events), since this command has no MQTT connection of its own.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from edgeface.storage.paths import DEFAULT_GALLERY, GALLERY_ENV, default_gallery_path

SHEET_FACE_PX = 112
SHEET_LABEL_PX = 300
SHEET_PAD_PX = 6
SHEET_FORMATS = (".png", ".jpg", ".jpeg")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gallery", type=Path, default=None,
                        help=f"gallery file holding the clusters (default: ${GALLERY_ENV}, else ./{DEFAULT_GALLERY})")
    parser.add_argument("--config", type=Path, help="YAML or JSON config file (defaults apply without it)")


def _open(args: argparse.Namespace):
    from edgeface.config import ClusterSettings, load_config
    from edgeface.storage.cluster_store import ClusterStore

    config = load_config(args.config)
    settings = getattr(config, "clusters", None) or ClusterSettings()
    path = args.gallery or default_gallery_path()
    return ClusterStore(path, settings, station=config.station_id, create=False)


def _when(value: datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%SZ")


def _info_dict(info) -> dict[str, Any]:
    return {"id": info.id, "status": info.status, "observations": info.observations, "visits": info.visits,
            "first_seen": _when(info.first_seen), "last_seen": _when(info.last_seen), "exemplars": info.exemplars,
            "ignored": info.ignored}


def _cmd_list(args: argparse.Namespace) -> int:
    with _open(args) as store:
        clusters = store.list_clusters()
    if args.status:
        clusters = [c for c in clusters if c.status == args.status]
    if args.json:
        print(json.dumps([_info_dict(c) for c in clusters]))
    else:
        for c in clusters:
            ignored = "\tignored" if c.ignored else ""  # on the station page's ignore list
            print(f"{c.id}\t{c.status}\t{c.observations} seen\t{c.visits} visits\tfirst {_when(c.first_seen)}"
                  f"\tlast {_when(c.last_seen)}{ignored}")
        print(f"{len(clusters)} cluster{'' if len(clusters) == 1 else 's'}", file=sys.stderr)
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    with _open(args) as store:
        info, exemplars = store.show(args.id)
        crops_on = store.settings.store_face_crops
    out = _info_dict(info)
    out["exemplar_list"] = [{"id": e.id, "quality": round(e.quality, 3), "seen": _when(e.ts), "crop": e.crop_jpeg is not None}
                            for e in exemplars]
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{info.id}: {info.status}, seen {info.observations} times on {info.visits} visits, "
              f"first {_when(info.first_seen)}, last {_when(info.last_seen)}")
        for e in exemplars:
            print(f"  exemplar {e.id}\tquality {e.quality:.2f}\tseen {_when(e.ts)}\t"
                  f"{'crop stored' if e.crop_jpeg else 'no crop'}")
        if not crops_on:
            print("  (face crops are not stored: clusters.store_face_crops is off)", file=sys.stderr)
    return 0


def _cmd_name(args: argparse.Namespace) -> int:
    with _open(args) as store:
        event = store.name(args.id, args.name, force=args.force, queue_event=True)
    if args.json:
        print(event.to_json())
    else:
        print(f"{event.cluster_id} is now {event.name!r} in the gallery; that person will be recognised from now on")
    return 0


def _cmd_merge(args: argparse.Namespace) -> int:
    with _open(args) as store:
        event = store.merge(args.a, args.b, force=args.force, queue_event=True)
    if args.json:
        print(event.to_json())
    else:
        print(f"{event.merged_id} merged into {event.kept_id}")
    return 0


def _cmd_forget(args: argparse.Namespace) -> int:
    with _open(args) as store:
        gone = store.forget(args.id)
    print(f"{gone} forgotten with its face data (the id is never reused)")
    return 0


def _cmd_ignore(args: argparse.Namespace) -> int:
    with _open(args) as store:
        done = store.ignore(args.id, not args.undo)
    print(f"no longer ignoring {done}" if args.undo else
          f"ignoring {done}: its face crops are erased and the same face will not be offered again")
    return 0


def render_sheet(store, limit: int = 50, faces: int = 6):
    """(sheet, clusters shown, clusters with crops): a contact sheet (uint8 BGR image), one row per
    cluster (confirmed first, then most recently seen) with its best stored face crops, or a note
    that crops are not stored."""
    import cv2
    import numpy as np

    clusters = sorted((c for c in store.list_clusters() if not c.ignored),
                      key=lambda c: (c.status != "confirmed", -c.last_seen.timestamp()))[:limit]
    crops_on = store.settings.store_face_crops
    row_h = SHEET_FACE_PX + 2 * SHEET_PAD_PX
    width = SHEET_LABEL_PX + faces * (SHEET_FACE_PX + SHEET_PAD_PX) + SHEET_PAD_PX
    header = 60
    sheet = np.full((header + max(len(clusters), 1) * row_h, width, 3), 255, np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX
    title = f"edgeface clusters: {len(clusters)} shown"
    cv2.putText(sheet, title, (10, 24), font, 0.7, (0, 0, 0), 2, cv2.LINE_AA)
    rows = [(info, store.crops(info.id, faces)) for info in clusters]
    if not any(crops for _, crops in rows):
        note = ("Face crops are not stored (privacy default): set clusters.store_face_crops: true" if not crops_on
                else "No face crops stored yet")
        cv2.putText(sheet, note, (10, 50), font, 0.45, (0, 0, 200), 1, cv2.LINE_AA)
    if not clusters:
        cv2.putText(sheet, "no clusters yet", (10, header + 40), font, 0.6, (80, 80, 80), 1, cv2.LINE_AA)
    for k, (info, crops) in enumerate(rows):
        top = header + k * row_h
        cv2.line(sheet, (0, top), (width, top), (200, 200, 200), 1)
        lines = [info.id, info.status, f"{info.observations} seen, {info.visits} visits", f"last {_when(info.last_seen)}"]
        for j, text in enumerate(lines):
            cv2.putText(sheet, text, (10, top + 24 + 24 * j), font, 0.55 if j else 0.7, (0, 0, 0), 2 if j == 0 else 1,
                        cv2.LINE_AA)
        left = SHEET_LABEL_PX
        for data in crops:
            image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            if image is None:
                continue
            tile = cv2.resize(image, (SHEET_FACE_PX, SHEET_FACE_PX), interpolation=cv2.INTER_AREA)
            sheet[top + SHEET_PAD_PX:top + SHEET_PAD_PX + SHEET_FACE_PX, left:left + SHEET_FACE_PX] = tile
            left += SHEET_FACE_PX + SHEET_PAD_PX
        if not crops:
            note = "face crops not stored" if not crops_on else "no face crop stored for this cluster yet"
            cv2.putText(sheet, note, (SHEET_LABEL_PX, top + row_h // 2), font, 0.5, (0, 0, 200), 1, cv2.LINE_AA)
    return sheet, len(rows), sum(1 for _, crops in rows if crops)


def _cmd_sheet(args: argparse.Namespace) -> int:
    import cv2

    from edgeface.recognition.clusters import ClusterError

    out: Path = args.output
    if out.suffix.lower() not in SHEET_FORMATS:
        raise ClusterError(f"sheet file {out} must end in {', '.join(SHEET_FORMATS)}")
    if not out.parent.is_dir():
        raise ClusterError(f"cannot write {out}: folder {out.parent} does not exist")
    if args.limit < 1 or args.faces < 1:
        raise ClusterError("--limit and --faces must be at least 1")
    with _open(args) as store:
        sheet, shown, with_crops = render_sheet(store, args.limit, args.faces)
        crops_on = store.settings.store_face_crops
    if not cv2.imwrite(str(out), sheet):
        raise ClusterError(f"cannot write {out}")
    print(f"wrote {out}: {shown} cluster{'' if shown == 1 else 's'}, {with_crops} with face crops")
    if not with_crops and not crops_on:
        print("note: face crops are not stored (clusters.store_face_crops is off), so the sheet shows ids only",
              file=sys.stderr)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `clusters` to the main `edgeface` parser."""
    clusters = subparsers.add_parser("clusters", help="unknown people grouped by face: list, name, merge, forget, ignore")
    actions = clusters.add_subparsers(dest="action", required=True, metavar="ACTION")

    listing = actions.add_parser("list", help="every cluster of unknowns, with status and sightings")
    listing.add_argument("--status", choices=["tentative", "confirmed"], help="only clusters with this status")
    listing.add_argument("--json", action="store_true", help="one JSON array")
    _common(listing)
    listing.set_defaults(handler=_cmd_list)

    show = actions.add_parser("show", help="one cluster and its exemplars")
    show.add_argument("id", metavar="ID", help="cluster id, e.g. unknown-7")
    show.add_argument("--json", action="store_true", help="one JSON object")
    _common(show)
    show.set_defaults(handler=_cmd_show)

    name = actions.add_parser("name", help="name a cluster: its faces become gallery templates of NAME")
    name.add_argument("id", metavar="ID")
    name.add_argument("name", metavar="NAME", help="new or existing person in the gallery")
    name.add_argument("--json", action="store_true", help="print the cluster_named event")
    name.add_argument("--force", action="store_true",
                      help="name it even when it was seen together with NAME or does not look like NAME's templates")
    _common(name)
    name.set_defaults(handler=_cmd_name)

    merge = actions.add_parser("merge", help="merge two clusters of the same person (the older id stays)")
    merge.add_argument("a", metavar="A")
    merge.add_argument("b", metavar="B")
    merge.add_argument("--json", action="store_true", help="print the cluster_merged event")
    merge.add_argument("--force", action="store_true", help="merge even when the two were on screen at the same time")
    _common(merge)
    merge.set_defaults(handler=_cmd_merge)

    forget = actions.add_parser("forget", help="delete a cluster and its face data")
    forget.add_argument("id", metavar="ID")
    _common(forget)
    forget.set_defaults(handler=_cmd_forget)
    ignore = actions.add_parser("ignore", help="not a face / never offer it again: keep the cluster on the ignore list "
                                "(its crops erased; the same face joins it and gets no cluster)")
    ignore.add_argument("id", metavar="ID")
    ignore.add_argument("--undo", action="store_true", help="take the cluster off the ignore list")
    _common(ignore)
    ignore.set_defaults(handler=_cmd_ignore)

    sheet = actions.add_parser("sheet", help="contact sheet of each cluster's best face crops (PNG/JPEG)")
    sheet.add_argument("-o", "--output", type=Path, required=True, help="image file to write (.png or .jpg)")
    sheet.add_argument("--limit", type=int, default=50, help="clusters shown at most (default 50)")
    sheet.add_argument("--faces", type=int, default=6, help="face crops per cluster (default 6)")
    _common(sheet)
    sheet.set_defaults(handler=_cmd_sheet)


def add_eval_cluster(eval_subparsers: argparse._SubParsersAction) -> None:
    """Add `cluster` under `edgeface eval`."""
    from edgeface.eval.cluster import add_arguments

    parser = eval_subparsers.add_parser("cluster", help="online clustering of unknowns vs offline average linkage")
    add_arguments(parser)
