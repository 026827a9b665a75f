"""What the robot tells people and the dashboard about its uploads: blocked reasons and the bounded heartbeat part.

The heartbeat body must not grow with history (the server caps it at 64 KiB):
it carries at most ``MAX_HEARTBEAT_ACTIVE`` unfinished jobs in queue order plus
a window of the most recently ended ones, each trimmed to the fields the
dashboard shows, and counts for everything else.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from core.client.journal import JobRecord, JobState

# Unfinished jobs listed one by one in a heartbeat (queue order); the rest are counted in ``queue_length``.
MAX_HEARTBEAT_ACTIVE = 30
# Characters of an error message a heartbeat entry keeps.
MAX_ERROR_CHARS = 200
# Fields of one heartbeat entry (null ones are left out): what the dashboard shows, no paths or metadata.
HEARTBEAT_FIELDS = (
    "job_id",
    "state",
    "size",
    "bytes_sent",
    "upload_id",
    "attempts",
    "parks",
    "blocked",
    "blocked_until",
    "blocked_label",
    "rate",
    "eta",
    "created",
    "updated",
)


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def blocked_label(record: JobRecord) -> str | None:
    """``"rate_limited until 2026-12-01T22:10:00Z"``, ``"auth"`` …: the reason, and when it is retried."""
    if not record.blocked or record.state is JobState.COMPLETE:
        return None
    if record.blocked_until and record.state is not JobState.FAILED:
        return f"{record.blocked} until {iso(record.blocked_until)}"
    return record.blocked


def _trim(entry: Mapping[str, Any]) -> dict[str, Any]:
    row = {name: entry[name] for name in HEARTBEAT_FIELDS if entry.get(name) not in (None, 0, 0.0)}
    row["state"] = entry.get("state")
    row["name"] = Path(str(entry.get("path", ""))).name
    if entry.get("error"):
        row["error"] = str(entry["error"])[:MAX_ERROR_CHARS]
    return row


def heartbeat_uploads(
    active: Sequence[Mapping[str, Any]], recent: Sequence[Mapping[str, Any]], counts: Mapping[str, int]
) -> dict[str, Any]:
    """The heartbeat's ``uploads`` object (docs/api.md, "Robot heartbeat: the uploads object")."""
    blocked: dict[str, int] = {}
    blocked_until: dict[str, float] = {}
    for entry in active:
        reason = entry.get("blocked")
        if not reason:
            continue
        blocked[reason] = blocked.get(reason, 0) + 1
        until = entry.get("blocked_until")
        if until is not None:
            blocked_until[reason] = min(until, blocked_until.get(reason, until))
    errors = [e.get("error") for e in active if e.get("error")]
    return {
        "items": [_trim(e) for e in active[:MAX_HEARTBEAT_ACTIVE]] + [_trim(e) for e in recent],
        "queue_length": len(active),
        "rate": sum(float(e.get("rate") or 0.0) for e in active),
        "counts": dict(counts),
        "failed": int(counts.get(JobState.FAILED.value, 0)),
        "blocked": blocked,
        "blocked_until": blocked_until,
        "blocked_labels": [f"{r} until {iso(blocked_until[r])}" if r in blocked_until else r for r in sorted(blocked)],
        "last_error": None if not errors else str(errors[-1])[:MAX_ERROR_CHARS],
    }
