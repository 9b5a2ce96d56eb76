"""Configuration: pydantic models with bounds and descriptions, and no I/O of their own beyond
reading the one file the user names. Unknown keys are errors, so a typo never passes silently."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edgeface.errors import ConfigError
from edgeface.text import first_line


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DetectorConfig(StrictModel):
    model: Literal["auto", "short", "full"] = Field(
        "auto",
        description="BlazeFace model: 'auto' runs both, full range for the scene and short range for faces too "
        "close for it (measured best on whole-scene photos, tight crops, LFW and 1080p video; see README); "
        "'short' (128x128 input, faces filling a good part of the frame, within ~2 m; the cheapest: ~1.6 ms) "
        "finds no face in a 1080p hall scene or in many whole-scene photos; 'full' (192x192, faces up to ~5 m, "
        "~5 ms) misses 42% of tight face crops. Tiles (pipeline.detect_tiles_x/_y) can be added on top of any",
    )
    min_score: float | None = Field(
        None, ge=0.05, le=0.99,
        description="Detector score below which a face is ignored (default: the model's own, 0.5 short / 0.6 full)",
    )


class AlignmentConfig(StrictModel):
    method: Literal["blazeface", "shape_predictor"] = Field(
        "blazeface",
        description="Landmarks that place the face on the embedder's chip: BlazeFace's own keypoints on a "
        "template calibrated against dlib's chips (~0.3 ms), or dlib's 5-point shape predictor started "
        "from the BlazeFace box (~3 ms per face; 0.2-0.3 points lower on LFW, see README)",
    )


class EmbedderConfig(StrictModel):
    precision: Literal["int8", "fp32"] = Field(
        "int8", description="Embedder weights; int8 falls back to fp32 when the self-check fails on this CPU"
    )
    threads: int = Field(1, ge=1, le=16, description="CPU threads for the embedder")
    flip: bool = Field(
        True,
        description="Average each face with its mirror image (test-time flip): doubles the embedder time and "
        "lifts LFW accuracy and open-set identification (README, Measured performance)",
    )


class RecognitionConfig(StrictModel):
    detector: DetectorConfig = DetectorConfig()
    alignment: AlignmentConfig = AlignmentConfig()
    embedder: EmbedderConfig = EmbedderConfig()
    second_opinion: Literal["auto", "always", "off"] = Field(
        "auto",
        description="A second, independent embedder (SFace) fused with dlib's for matching "
        "(edgeface.recognition.fusion): 'auto' asks it only when dlib's answer is not clear-cut (near the "
        "threshold, or a close runner-up), 'always' for every face, 'off' never (dlib alone, no SFace model "
        "loaded). Enrollment stores both embeddings unless off. Measured: README, Second opinion",
    )

    @field_validator("second_opinion", mode="before")
    @classmethod
    def _yaml_off(cls, value: object) -> object:
        """YAML 1.1 reads a bare `off` as false (and `on` as true)."""
        return {False: "off", True: "always"}.get(value, value) if isinstance(value, bool) else value


class TrackingConfig(StrictModel):
    iou_min: float = Field(0.2, gt=0.0, le=1.0, description="Least IoU between a track's (predicted) box and a face for them to be associated")
    track_max_missed_frames: int = Field(10, ge=0, le=1000, description="A track ends after this many consecutive frames without its face")
    tie_iou_margin: float = Field(0.15, ge=0.0, le=1.0, description="Rival associations within this IoU of the best one are settled by embedding distance")
    appearance_max_distance: float = Field(
        0.6, gt=0.0, le=2.0,
        description="Embedding distance above which the tracker refuses to continue a track with a face (identity-swap guard)",
    )
    track_max_unconfirmed_frames: int | None = Field(
        30, ge=1, le=100000,
        description="A track whose face was never good enough to embed (turned away, too small, blurred) ends after "
        "this many frames and its face starts a new track: without an embedding only box overlap holds it "
        "together, and a box can slide from one turned-away face onto a neighbour's; None: never",
    )
    confirm_iou_below: float = Field(
        0.5, ge=0.0, le=1.0,
        description="An association with IoU below this is confirmed by embedding distance (0 never, 1 always)",
    )
    track_max_gap_s: float | None = Field(
        5.0, gt=0.0, le=86400.0,
        description="Seconds without a frame (a live stream that dropped and reconnected, or stalled) after which "
        "open tracks end instead of continuing with the faces seen after the gap; None: never by time",
    )
    scene_cut_min_diff: float = Field(
        20.0, ge=0.0, le=255.0,
        description="Mean absolute grey-level change of a 32x18 thumbnail between frames above which every track ends "
        "(a cut in edited video); 0 disables",
    )


class QualityGateConfig(StrictModel):
    min_face_px: float = Field(40.0, ge=0.0, le=4096.0, description="Shorter side of the face box, source pixels")
    blur_min_var: float = Field(10.0, ge=0.0, le=10000.0, description="Least variance of the Laplacian of the 150 px grey chip")
    max_yaw_deg: float = Field(40.0, gt=0.0, le=90.0, description="Largest head turn (from keypoints), degrees")
    max_roll_deg: float = Field(35.0, gt=0.0, le=180.0, description="Largest head tilt (eye line), degrees")
    min_score: float = Field(0.5, ge=0.0, le=1.0, description="Least detector score")


class DecisionConfig(StrictModel):
    min_good_faces: int = Field(3, ge=1, le=100, description="Good (gated) faces a name needs before a track is recognised")
    min_good_faces_unknown: int = Field(
        6, ge=1, le=200, description="Good faces before a track is declared unknown (a known person's first faces are often poor)"
    )
    max_faces_undecided: int = Field(
        12, ge=1, le=500, description="Good faces after which a track without a clear winner is unknown (weak evidence)"
    )
    min_vote_share: float = Field(0.6, ge=0.5, le=1.0, description="Share of the quality-weighted vote the winner needs")
    max_runner_up_ratio: float = Field(
        0.5, ge=0.0, lt=1.0, description="Runner-up name's weight, as a fraction of the winner's, above which it is a tie (unknown)"
    )
    unknown_best_faces: int = Field(5, ge=1, le=100, description="Best faces averaged into an unknown track's embedding for clustering")
    recheck_window: int = Field(3, ge=1, le=50, description="Consecutive disagreeing re-checks that switch a decided track's person")
    runner_up_margin: float = Field(
        0.06, ge=0.0, le=2.0,
        description="A recognised person's runner-up (the next nearest enrolled person) less than this farther away "
        "than them (euclidean distance) is named in the recognized event's runner_up: a look-alike, such as a relative",
    )
    recent_tracks_kept: int = Field(
        100, ge=0, le=100000,
        description="Decided tracks whose aggregated embedding stays in memory for negative feedback "
        "('this was not NAME', the MQTT reject command)",
    )
    match_max_distance: float | None = Field(
        None, gt=0.0, le=2.0, description="Fixed gallery match threshold (euclidean, unit vectors); overrides gallery.match_max_distance "
        "and gallery.false_alarm_rate"
    )

    @model_validator(mode="after")
    def _ordered(self) -> DecisionConfig:
        if not self.min_good_faces <= self.min_good_faces_unknown <= self.max_faces_undecided:
            raise ValueError("need min_good_faces <= min_good_faces_unknown <= max_faces_undecided")
        return self


CAMERA_NAME_PATTERN = r"^[A-Za-z0-9_.-]+$"
"""Camera names: letters, digits, '_', '.', '-' (they appear in MQTT payloads and may become topic levels)."""


def check_camera_name(name: str) -> str:
    """`name` if it is a usable camera name, else ValueError saying what is allowed."""
    import re

    if not re.match(CAMERA_NAME_PATTERN, name) or len(name) > 64:
        raise ValueError(f"camera name {name!r} is not allowed: use 1-64 letters, digits, '_', '.' or '-' (it goes "
                         f"into events and MQTT topics, where '/', '+', '#' and spaces break things)")
    return name


class SourceConfig(StrictModel):
    """`pipeline.source:` how frames are read (edgeface.io.sources.open_source takes these as arguments)."""

    max_fps: float | None = Field(
        None, gt=0.0, le=1000.0,
        description="Cap on frames processed per second (live sources drop the frames in between; files skip frames "
        "by their timestamp; ignored with --every-frame). None: as fast as frames come",
    )
    roi: tuple[int, int, int, int] | None = Field(
        None,
        description="Region of interest x, y, w, h in pixels of the full frame: only this part is processed "
        "(cheaper, and faces outside it are ignored). None: the whole frame",
    )
    max_retries: int = Field(
        10, ge=0, le=1_000_000,
        description="Live sources (camera, URL, GStreamer): consecutive failed (re)connection attempts before "
        "`edgeface run` gives up with an error and exit code 1 (0: fail on the first loss)",
    )
    backoff_initial_s: float = Field(
        0.5, gt=0.0, le=3600.0, description="Wait before the first reconnection attempt, seconds; doubles per failure"
    )
    backoff_max_s: float = Field(30.0, gt=0.0, le=86400.0, description="Longest wait between two reconnection attempts, seconds")
    open_timeout_s: float = Field(
        10.0, gt=0.0, le=3600.0, description="Network streams: how long opening may take before the attempt fails, seconds"
    )
    read_timeout_s: float = Field(
        10.0, gt=0.0, le=3600.0,
        description="Network streams: how long without a frame before the stream counts as stalled and is reopened, seconds",
    )

    @model_validator(mode="after")
    def _consistent(self) -> SourceConfig:
        if self.roi is not None:
            x, y, w, h = self.roi
            if x < 0 or y < 0 or w <= 0 or h <= 0:
                raise ValueError("roi is x, y, w, h: x and y 0 or more, w and h more than 0")
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError("backoff_max_s must be at least backoff_initial_s")
        return self


class PipelineConfig(StrictModel):
    camera: str = Field("cam0", min_length=1, max_length=64, pattern=CAMERA_NAME_PATTERN,
                        description="Camera name in events")
    embed_every_frames: int = Field(3, ge=1, le=1000, description="An undecided track's face is embedded at most every this many frames; a face refused on its aligned chip (blurred) is tried again this many frames later")
    recheck_every_frames: int = Field(
        30, ge=1, le=100000, description="A decided track's face is embedded again (re-check) every this many frames"
    )
    detect_tiles_x: int = Field(
        1, ge=1, le=8,
        description="Detect also on this many tile columns (1 with detect_tiles_y 1: whole frame only). Each tile is "
        "one more detector run per frame. Measured on video/crowd_walk.mp4 (1080p): full range on the whole frame "
        "is the best default; 2x2 tiles on top cost more than half the frame rate (~88 -> ~38 fps) and find more, "
        "smaller and more fragmented faces (19 tracks instead of 11); short range with 3x2 tiles (202 faces, 16 "
        "tracks) is an alternative to full range where the full model is too slow",
    )
    detect_tiles_y: int = Field(1, ge=1, le=8, description="Tile rows (see detect_tiles_x)")
    detect_tile_overlap_frac: float = Field(0.2, ge=0.0, lt=0.5, description="Overlap of neighbouring tiles, fraction of a tile")
    detect_tiles_min_side_px: int = Field(1000, ge=0, le=100000, description="Frames with a long side up to this skip the tiles")
    detect_work_long_side_px: int = Field(
        960, ge=64, le=8192, description="With tiles, the frame is first downscaled so its long side is at most this"
    )
    refine_face_max_frac: float = Field(
        1.0, ge=0.0, le=1.0,
        description="Faces narrower than this fraction of the frame's long side get their keypoints re-detected "
        "on a full-resolution crop (short-range model, ~1.6 ms per embedded face) before alignment: the detector "
        "sees the whole frame at 128/192 px, where a small face is a few pixels wide and its keypoints are off "
        "by 10-30 px. 1 (default): every face about to be embedded, as the photo commands do; 0 turns it off",
    )
    refine_once_per_track: bool = Field(
        True,
        description="Run the keypoint refiner once per track and follow its keypoints onto the track's later faces "
        "(registration of a small grey patch of the face instead of a model run); a face is refined afresh when its "
        "size changed by a quarter, after 150 frames, or when the registration fails. Measured against refining every "
        "embedded face: the same tracks and labels on both videos, CelebA pseudo-video verification 94.9/94.6% "
        "against 94.8/94.5% (README, issue 14). false: every embedded face is refined",
    )
    source: SourceConfig = SourceConfig()
    quality: QualityGateConfig = QualityGateConfig()
    tracking: TrackingConfig = TrackingConfig()
    decision: DecisionConfig = DecisionConfig()


class CameraConfig(StrictModel):
    """One camera of `cameras:`: its name and source, and the settings that may differ from the top-level
    ones (unset: the top-level `recognition.detector`, `pipeline.quality`, `pipeline.detect_tiles_*` and
    `pipeline.source`)."""

    name: str = Field(description="Camera name in events (`camera`), logs and stats: 1-64 letters, digits, '_', '.' "
                      "or '-'")
    source: str | None = Field(
        None, min_length=1,
        description="Camera index or /dev/videoN, rtsp:// or http:// URL, GStreamer pipeline, video file or image "
        "folder (as --source). A URL with a password belongs in source_env instead (the config file is readable "
        "by the service's user and often by others)",
    )
    source_env: str | None = Field(
        None, min_length=1, max_length=128, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Environment variable holding the source (e.g. set in the 0600 /etc/edgeface/edgeface.env), so "
        "that a camera password stays out of the config file and the process list; give source or source_env",
    )
    detector: DetectorConfig | None = Field(None, description="This camera's detector (default: recognition.detector)")
    quality: QualityGateConfig | None = Field(None, description="This camera's quality gate (default: pipeline.quality)")
    detect_tiles_x: int | None = Field(None, ge=1, le=8, description="This camera's tile columns (default: pipeline.detect_tiles_x)")
    detect_tiles_y: int | None = Field(None, ge=1, le=8, description="This camera's tile rows (default: pipeline.detect_tiles_y)")
    capture: SourceConfig | None = Field(
        None, description="How this camera's frames are read: frame-rate cap, region of interest, retries, timeouts "
        "(default: pipeline.source; a region of interest is usually one camera's)")

    @field_validator("name")
    @classmethod
    def _safe_name(cls, name: str) -> str:
        return check_camera_name(name)

    @model_validator(mode="after")
    def _one_source(self) -> CameraConfig:
        if (self.source is None) == (self.source_env is None):
            raise ValueError(f"camera {self.name!r} needs a source or a source_env (one of them)")
        return self


class GalleryConfig(StrictModel):
    false_alarm_rate: float = Field(
        0.01, gt=0.0, lt=1.0,
        description="Target share of strangers' faces given a name (per face, before the per-track vote). The "
        "match threshold is derived from it, the gallery's current size and the measured impostor scores of the "
        "score that decides (models/impostor_scores.json: the fused score's unless recognition.second_opinion is "
        "off; the fused table is the stricter of LFW's and CelebA's wild photos'), so it follows the gallery size: "
        "enrolling people tightens it",
    )
    match_max_distance: float | None = Field(
        None, gt=0.0, le=2.0,
        description="A fixed match threshold (euclidean, unit vectors) instead of the one derived from "
        "false_alarm_rate: a face matches an enrolled person when its embedding is closer than this. 0.3776 is "
        "a false-accept rate of 0.1% per comparison on LFW View 1 pairsDevTrain.txt",
    )


class MqttConfig(StrictModel):
    """`mqtt:` section: how to reach the broker and what the station publishes there. Pure data: files
    and environment are read by `edgeface.service.mqtt.client.MqttPublisher` (this class is re-exported there)."""

    url: str = Field("mqtt://127.0.0.1:1883", description="mqtt://host[:port] (1883) or mqtts://host[:port] (8883, TLS)")
    topic_prefix: str | None = Field(None, description="Topic prefix ending in '/'; default edgeface/<station_id>/")
    client_id: str | None = Field(None, max_length=128, description="MQTT client id; default edgeface-<station_id>")
    username: str | None = Field(None, max_length=256, description="Username (also allowed in the URL: mqtt://user@host)")
    password_env: str = Field("EDGEFACE_MQTT_PASSWORD", description="Environment variable holding the password")
    password_file: Path | None = Field(None, description="File holding the password (first line)")
    ca_file: Path | None = Field(None, description="CA bundle to verify the broker (turns TLS on)")
    cert_file: Path | None = Field(None, description="Client certificate (PEM) for mutual TLS")
    key_file: Path | None = Field(None, description="Client private key (PEM) for mutual TLS")
    tls_insecure: bool = Field(False, description="Skip the broker host name check (self-signed test setups only)")
    protocol: Literal["auto", "5", "3.1.1"] = Field("auto", description="MQTT version; auto = 5, falling back to 3.1.1")
    keepalive_s: int = Field(30, ge=5, le=3600, description="Keepalive interval, seconds")
    reconnect_min_s: float = Field(1.0, gt=0, le=60, description="First reconnect delay; doubles per failed attempt")
    reconnect_max_s: float = Field(60.0, gt=0, le=3600, description="Longest reconnect delay")
    outbox_path: Path | None = Field(
        None, description="Outbox SQLite file; default $STATE_DIRECTORY or ~/.local/state/edgeface/outbox-<station>.sqlite"
    )
    outbox_max_rows: int = Field(100_000, ge=10, le=10_000_000, description="Outbox bound; the oldest events are dropped beyond it")
    outbox_synchronous: Literal["FULL", "NORMAL"] = Field(
        "FULL", description="FULL survives power loss; NORMAL survives crashes only (faster)"
    )
    outbox_max_mb: float = Field(
        64.0, ge=1.0, le=100_000.0,
        description="Outbox file size cap, MiB (write-ahead log included); the oldest events are dropped beyond it",
    )
    max_inflight: int = Field(20, ge=1, le=1000, description="Messages handed to the broker without a PUBACK yet")
    flush_timeout_s: float = Field(5.0, ge=0, le=600, description="On close, how long to wait for the outbox to drain")
    command_queue: int = Field(16, ge=1, le=1000, description="Commands waiting for the worker; more are answered 'busy'")
    commands: bool = Field(True, description="Accept commands on <prefix>cmd/<verb> (edgeface run)")
    command_secret_env: str = Field(
        "EDGEFACE_COMMAND_SECRET",
        description="Environment variable holding the shared secret for signed (HMAC) commands; also read from "
        "command_secret_file or $CREDENTIALS_DIRECTORY/command_secret. No secret: commands are not signed",
    )
    command_secret_file: Path | None = Field(None, description="File holding the command secret (first line)")
    allow_unsigned_commands: bool = Field(
        False,
        description="Without a command secret, accept unsigned commands that change the station (enroll, forget, "
        "...): anyone who can publish on the broker can then enroll and forget people. Only for a broker no one "
        "else can publish to; the default refuses them (status is always answered)",
    )
    response_topic_prefix: str | None = Field(
        None, min_length=2, max_length=200, pattern=r"^[^#+$][^#+]*/$",
        description="MQTT 5 response topics under this prefix (ending in '/') are honoured; any other response "
        "topic is ignored and the reply goes to <prefix>cmd/<verb>/reply. None: only the station's own reply "
        "topics (<prefix>cmd/<verb>/reply and below)",
    )
    stats_interval_s: float = Field(60.0, ge=1.0, le=86400.0, description="Seconds between two stats messages")
    homeassistant: bool = Field(False, description="Publish Home Assistant MQTT discovery configs (retained)")
    discovery_prefix: str = Field(
        "homeassistant", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$",
        description="Home Assistant's discovery prefix",
    )
    present_timeout_s: float = Field(
        120.0, ge=5.0, le=86400.0,
        description="A person's 'present' sensor turns off this many seconds after they were last recognised "
        "(the unknown-visitor sensor likewise after the last unknown visitor)",
    )


class ClusterSettings(StrictModel):
    """Online clustering of unknown faces (edgeface.recognition.clusters, where the defaults' measurements are)."""

    assign_max_distance: float = Field(
        0.33, gt=0.0, le=2.0,
        description="Root-mean-squared distance to a cluster's members (less the spread discount) below which a "
        "face joins it and two clusters merge; measured on LFW and CelebA, see edgeface/recognition/clusters.py")
    spread_discount: float = Field(
        0.5, ge=0.0, le=1.0,
        description="Share of the clusters' own spread (mean squared distance of their members to their mean) "
        "taken off the squared linkage: 0 is plain average linkage, 1 centroid linkage; see edgeface/recognition/clusters.py")
    fused: bool = Field(
        True, description="Score a track against a cluster by the fused dlib+SFace distance (on dlib's "
        "scale, edgeface/recognition/fusion.py) when both have SFace embeddings; dlib's distance otherwise "
        "(`edgeface eval cluster --embedder dlib|fused` measures both)")
    name_max_distance: float = Field(
        0.45, gt=0.0, le=2.0,
        description="Naming a cluster after a person already in the gallery is refused (unless forced) when its "
        "faces' median distance to the person's nearest template is above this; see edgeface/recognition/clusters.py")
    min_observations: int = Field(
        3, ge=1, le=1000,
        description="Observations (tracks) a cluster needs before it is confirmed instead of tentative")
    min_tracks: int = Field(2, ge=1, le=1000, description="Distinct tracks a cluster needs before it is confirmed")
    max_exemplars: int = Field(8, ge=1, le=64,
                               description="Member embeddings kept per cluster (they become templates when named)")
    tentative_max_age_s: float = Field(
        7 * 86400.0, gt=0.0, description="A tentative cluster not seen for this many seconds is forgotten")
    visit_gap_s: float = Field(
        300.0, ge=0.0, description="A sighting this many seconds after the previous one counts as a new visit")
    max_clusters: int = Field(
        20000, ge=10, le=1_000_000,
        description="Live clusters at most; beyond it the least recently seen tentative cluster is dropped")
    store_face_crops: bool = Field(
        True, description="Keep each exemplar's face chip (JPEG, in the gallery file, which is 0600) for the station "
        "page and `edgeface clusters sheet`: naming unknown people needs their faces. Crops older than "
        "crop_retention_days are erased, and forgetting a cluster or naming it erases its crops")
    crop_retention_days: float = Field(
        30.0, gt=0.0, le=3650.0,
        description="Face crops of unknown clusters older than this many days are erased (the clusters stay)")


class WebConfig(StrictModel):
    """`web:` section: the station page (`edgeface run --web HOST:PORT`), served by the running station."""

    listen: str | None = Field(
        None, description="HOST:PORT to serve the page on (off when unset); a bare PORT binds 127.0.0.1 only")
    password_env: str = Field("EDGEFACE_WEB_PASSWORD", description="Environment variable holding the page's password")
    password_file: Path | None = Field(None, description="File holding the page's password (first line)")
    cert_file: Path | None = Field(None, description="PEM certificate: serve HTTPS (with key_file)")
    key_file: Path | None = Field(None, description="PEM private key of cert_file")
    live_max_fps: float = Field(5.0, gt=0.0, le=30.0,
                                description="Frames per second at most in the live view (encoded only while watched)")
    session_max_age_s: float = Field(12 * 3600.0, gt=0.0, description="A login lasts this many seconds")
    max_upload_bytes: int = Field(10_000_000, ge=1000, description="Largest enrollment photo accepted, bytes")


class FleetConfig(StrictModel):
    """`fleet:` section: stations sharing one gallery over MQTT (docs/fleet.md). The shared key signs every
    change record; a station without it does not join. Pure data: the key is read by `edgeface.service.fleet`."""

    enabled: bool = Field(False, description="Join the fleet: publish this gallery's changes and apply the others'")
    group: str = Field("default", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$",
                       description="Fleet name: records live under edgeface/fleet/<group>/")
    key_env: str = Field("EDGEFACE_FLEET_KEY", description="Environment variable holding the shared key")
    key_file: Path | None = Field(None, description="File holding the shared key (first line); also read from "
                                  "$CREDENTIALS_DIRECTORY/fleet_key (systemd LoadCredential=)")
    cluster_block: int | None = Field(
        None, ge=1, le=999,
        description="This station's block of unknown-N numbers (N = block x 1,000,000 + k), so two stations never "
        "give one id to two strangers; None: derived from the station id (two stations of a group that get the same "
        "block are reported: then set it)")
    poll_s: float = Field(0.5, gt=0.0, le=60.0,
                          description="How often the station looks for changes other processes made to its gallery file")


class Config(StrictModel):
    station_id: str = Field("edgeface", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$",
                            description="Name of this station in events and MQTT topics")
    recognition: RecognitionConfig = RecognitionConfig()
    gallery: GalleryConfig = GalleryConfig()
    clusters: ClusterSettings = ClusterSettings()
    pipeline: PipelineConfig = PipelineConfig()
    cameras: list[CameraConfig] = Field(
        default_factory=list, max_length=64,
        description="Several cameras in one process (one set of models, one gallery, one outbox); each camera has a "
        "capture thread, a tracker and a decider of its own. Empty: the one camera of --source, named "
        "pipeline.camera. --source NAME=SRC on the command line replaces this list",
    )
    web: WebConfig = WebConfig()
    mqtt: MqttConfig | None = Field(
        None, description="MQTT broker: when set, `edgeface run` publishes there unless --sink jsonl is given",
    )
    fleet: FleetConfig = FleetConfig()

    @field_validator("cameras")
    @classmethod
    def _unique_cameras(cls, cameras: list[CameraConfig]) -> list[CameraConfig]:
        names = [camera.name for camera in cameras]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(f"camera names must be unique; {', '.join(repr(n) for n in twice)} "
                             f"{'is' if len(twice) == 1 else 'are'} used more than once")
        return cameras

    def for_camera(self, camera: CameraConfig) -> Config:
        """This config as one camera sees it: `pipeline.camera` is its name, and its own detector, quality
        gate and tiles replace the top-level ones."""
        pipeline: dict[str, Any] = {"camera": camera.name}
        if camera.quality is not None:
            pipeline["quality"] = camera.quality
        if camera.capture is not None:
            pipeline["source"] = camera.capture
        for key in ("detect_tiles_x", "detect_tiles_y"):
            if getattr(camera, key) is not None:
                pipeline[key] = getattr(camera, key)
        update: dict[str, Any] = {"pipeline": self.pipeline.model_copy(update=pipeline), "cameras": []}
        if camera.detector is not None:
            update["recognition"] = self.recognition.model_copy(update={"detector": camera.detector})
        return self.model_copy(update=update)

    @property
    def match_max_distance(self) -> float | None:
        """The fixed match threshold when one is configured: `gallery.match_max_distance`, unless
        `pipeline.decision.match_max_distance` overrides it; None when the threshold is derived from
        `gallery.false_alarm_rate` (edgeface.recognition.false_alarm.MatchThreshold.from_config)."""
        override = self.pipeline.decision.match_max_distance
        return self.gallery.match_max_distance if override is None else override


def _fields_at(loc: tuple[int | str, ...]) -> list[str]:
    """The keys the model allows at `loc` (for "did you mean"), [] where that is not a model."""
    import typing

    model: Any = Config
    for part in loc:
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or part not in model.model_fields:
            return []
        annotation: Any = model.model_fields[part].annotation
        candidates = [*typing.get_args(annotation), annotation]  # `MqttConfig | None` or `MqttConfig`
        model = next((a for a in candidates if isinstance(a, type) and issubclass(a, BaseModel)), None)
    return list(model.model_fields) if isinstance(model, type) and issubclass(model, BaseModel) else []


def _yaml_lines(text: str) -> dict[tuple[str, ...], int]:
    """1-based line of every mapping key in a YAML document, by its path of keys."""
    import yaml

    lines: dict[tuple[str, ...], int] = {}

    def walk(node: Any, path: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                child = (*path, str(key.value))
                lines.setdefault(child, key.start_mark.line + 1)
                walk(value, child)
        elif isinstance(node, yaml.SequenceNode):  # list items by index (cameras.1.name)
            for index, item in enumerate(node.value):
                child = (*path, str(index))
                lines.setdefault(child, item.start_mark.line + 1)
                walk(item, child)

    try:
        walk(yaml.compose(text), ())
    except yaml.YAMLError:
        pass
    return lines


def _problems(error: ValidationError, lines: dict[tuple[str, ...], int]) -> list[str]:
    import difflib

    problems = []
    for item in error.errors():
        loc = tuple(item["loc"])
        where = ".".join(str(part) for part in loc) or "(top level)"
        keys = tuple(str(part) for part in loc)
        line = next((lines[keys[:n]] for n in range(len(keys), 0, -1) if keys[:n] in lines), None)
        prefix = f"line {line}: " if line is not None else ""
        if item["type"] == "extra_forbidden":
            message = "unknown key"
            close = difflib.get_close_matches(str(loc[-1]), _fields_at(loc[:-1]), n=1, cutoff=0.6)
            if close:
                message += f" (did you mean '{close[0]}'?)"
        else:
            message = item["msg"].removeprefix("Value error, ")
        problems.append(f"{prefix}{where}: {message}")
    return problems


def load_config(path: Path | None) -> Config:
    """Read a YAML or JSON config file (or the defaults when path is None). Every problem in it is
    reported in one line: the file, each key's line (YAML) and a "did you mean" for a misspelt key."""
    if path is None:
        return Config()
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f"cannot read config {path}: {error.strerror or error}") from None
    is_json = path.suffix.lower() == ".json"
    try:
        if is_json:
            raw = json.loads(text)
        else:
            import yaml

            raw = yaml.safe_load(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"config {path} is not valid JSON: line {error.lineno}, column {error.colno}: "
                          f"{error.msg}") from None
    except Exception as error:  # yaml's errors carry the place of the problem in problem_mark
        mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
        problem = getattr(error, "problem", None) or first_line(error)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        raise ConfigError(f"config {path} is not valid YAML: {where}{problem}") from None
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"config {path}: the top level must be a mapping of keys (station_id:, recognition:, "
                          f"...), not a {type(raw).__name__}")
    try:
        return Config.model_validate(raw or {})
    except ValidationError as error:
        problems = _problems(error, {} if is_json else _yaml_lines(text))
        count = f"{len(problems)} problems: " if len(problems) > 1 else ""
        raise ConfigError(f"config {path}: {count}{'; '.join(problems)}") from None
