"""The face of the last unknown visitor for Home Assistant's MQTT `image` entity.

An `unknown` event with a cluster makes that cluster's best stored face crop (the cluster store's,
so only when `clusters.store_face_crops` is on) the retained JPEG on `<prefix>last_unknown/face`.
The crop is read on the station's ticker, never on the camera thread.

Erasure: the image is the face of a cluster, so it goes (an empty retained message: the broker
drops it) when that face goes: the cluster is forgotten or ignored, it expires or its crops pass
their retention while it is unnamed, or the person it was named after is forgotten. Which cluster
and names it shows is kept in the station's Home Assistant state file, so a restart still knows
what to clear.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


class UnknownFace:
    """Which face is published, and when it must be replaced or cleared. Not thread-safe: the
    station calls it under its lock."""

    def __init__(self, cluster_id: str | None = None, names: set[str] | None = None) -> None:
        self.cluster_id = cluster_id
        """The cluster whose face is published (None: nothing is)."""
        self.names: set[str] = set(names or ())
        """The ids and names that face is known under now (its cluster, merged into, named)."""
        self.due: str | None = None
        """A cluster whose face should be published on the next tick."""

    def on_event(self, event: Any) -> None:
        kind = getattr(event, "type", None)
        if kind == "unknown" and event.cluster_id:
            self.due = event.cluster_id
        elif kind == "cluster_named" and event.cluster_id in self.names:
            self.names.add(event.name)
        elif kind == "cluster_merged" and event.merged_id in self.names:
            self.names.add(event.kept_id)

    def concerns(self, who: str) -> bool:
        """Whether forgetting `who` (a cluster id or a person's name) must clear the published face."""
        return self.cluster_id is not None and who in self.names

    def take_due(self, store: Any) -> tuple[str, bytes] | None:
        """(cluster id, JPEG) to publish now, if a new unknown visitor's face is stored."""
        cluster_id, self.due = self.due, None
        if cluster_id is None or store is None:
            return None
        try:
            crops = store.crops(cluster_id, 1)
        except Exception as error:  # merged, named or forgotten since: nothing to show
            log.debug("no face for %s: %s", cluster_id, error)
            return None
        if not crops:
            return None
        self.cluster_id, self.names = cluster_id, {cluster_id}
        return cluster_id, crops[0]

    def still_stored(self, store: Any, people: set[str]) -> bool:
        """Whether the published face still exists where it came from: its cluster (or the one it was
        merged into) still holds crops, or it was named after someone still enrolled whose templates
        still have their faces (template crops have the same retention)."""
        if self.cluster_id is None:
            return True
        if store is None:
            return False
        for who in sorted(self.names):
            try:
                if who.startswith("unknown-") and store.crops(who, 1):
                    return True
                if who in people and store.template_crops(who, 1):
                    return True
            except Exception:  # merged, named or forgotten: that name holds nothing
                continue
        return False

    def cleared(self) -> None:
        self.cluster_id, self.names, self.due = None, set(), None

    def to_state(self) -> dict[str, Any]:
        return {"face_cluster": self.cluster_id, "face_names": sorted(self.names)}

    @classmethod
    def from_state(cls, data: dict[str, Any]) -> UnknownFace:
        cluster = data.get("face_cluster")
        names = data.get("face_names") or []
        return cls(str(cluster) if cluster else None, {str(n) for n in names} if isinstance(names, list) else set())
