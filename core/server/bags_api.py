"""HTTP routes of the bag catalogue: list and filter bags, one bag's detail, the whole bag as a tar, admin delete.

A bag is downloaded as one uncompressed tar of its folder (``<bag>/<file>``),
written while it is sent: each member's header is computed up front, so the
reply carries an exact Content-Length and nothing is assembled on disk.
"""

from __future__ import annotations

import logging
import tarfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import click
from flask import Blueprint, Flask, Response, current_app, jsonify, request
from flask.cli import with_appcontext

from core.protocol import (
    BAG_DOWNLOAD_PATH,
    BAG_PATH,
    BAGS_PATH,
    PARAM_LIMIT,
    PARAM_MESSAGE_TYPE,
    PARAM_OFFSET,
    PARAM_ORDER,
    PARAM_RECOVERED,
    PARAM_ROBOT,
    PARAM_SESSION,
    PARAM_SINCE_NS,
    PARAM_TOPIC,
    PARAM_TOPIC_PREFIX,
    PARAM_UNTIL_NS,
    ErrorCode,
    UploadState,
)
from core.server.api import _attachment
from core.server.catalog import BagQuery, BagRecord, FileFacts
from core.server.errors import Forbidden, InvalidField, NotFound
from core.server.identity import Identity, current_identity
from core.server.service import Download, UploadService, isoformat
from core.server.validation import MAX_PAGE_OFFSET, MAX_PAGE_SIZE, page_param

log = logging.getLogger("upload_server")

_BLOCK = tarfile.BLOCKSIZE
# Who the `flask bags delete` command acts as in the audit log line.
CLI_IDENTITY = Identity("cli", admin=True)
_TRUE, _FALSE = {"1", "true", "yes"}, {"0", "false", "no"}


def _flag(args: Mapping[str, str], name: str) -> bool | None:
    raw = args.get(name)
    if raw is None:
        return None
    if raw.lower() in _TRUE | _FALSE:
        return raw.lower() in _TRUE
    msg = f"{name} must be true or false"
    raise InvalidField(msg, details={"field": name})


def _nanoseconds(args: Mapping[str, str], name: str) -> int | None:
    raw = args.get(name)
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if not 0 <= value < 1 << 63:
        msg = f"{name} must be nanoseconds since the epoch (a non-negative integer)"
        raise InvalidField(msg, details={"field": name})
    return value


def _text(args: Mapping[str, str], name: str) -> str | None:
    return args.get(name) or None


def parse_query(args: Mapping[str, str], identity: Identity) -> BagQuery:
    """The filters of ``GET /bags``; a robot's key sees only the bags it uploaded."""
    order = args.get(PARAM_ORDER, "desc")
    if order not in ("asc", "desc"):
        msg = f"{PARAM_ORDER} must be asc or desc"
        raise InvalidField(msg, details={"field": PARAM_ORDER})
    return BagQuery(
        owner=None if identity.admin else identity.name,
        robot_id=_text(args, PARAM_ROBOT),
        session=_text(args, PARAM_SESSION),
        since_ns=_nanoseconds(args, PARAM_SINCE_NS),
        until_ns=_nanoseconds(args, PARAM_UNTIL_NS),
        topic=_text(args, PARAM_TOPIC),
        topic_prefix=bool(_flag(args, PARAM_TOPIC_PREFIX)),
        message_type=_text(args, PARAM_MESSAGE_TYPE),
        recovered=_flag(args, PARAM_RECOVERED),
        ascending=order == "asc",
        limit=page_param(args, PARAM_LIMIT, 50, MAX_PAGE_SIZE),
        offset=page_param(args, PARAM_OFFSET, 0, MAX_PAGE_OFFSET),
    )


def describe(bag: BagRecord, *, detailed: bool) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "bag_id": bag.bag_id,
        "name": bag.name,
        "owner": bag.owner,
        "robot_id": bag.robot_id,
        "session": bag.session,
        "split_index": bag.split_index,
        "storage": bag.storage,
        "recovered": bag.recovered,
        "start_ns": bag.start_ns,
        "end_ns": bag.end_ns,
        "duration_ns": bag.duration_ns,
        "message_count": bag.message_count,
        "size": bag.size,
        "stored_size": bag.stored_size,
        "updated_at": isoformat(bag.updated_at),
        "topics": [{"name": t.name, "type": t.type, "message_count": t.message_count} for t in bag.topics],
    }
    if detailed:
        doc["files"] = [_file(f) for f in bag.files]
    return doc


def _file(facts: FileFacts) -> dict[str, Any]:
    return {
        "upload_id": facts.upload_id,
        "filename": facts.filename,
        "kind": facts.kind,
        "size": facts.size,
        "stored_size": facts.stored_size,
        "sha256": facts.sha256,
        "parsed": facts.parsed,
        "download": f"/uploads/{facts.upload_id}/file",
    }


@dataclass(frozen=True)
class BagService:
    """The catalogue's operations on top of ``UploadService`` (which owns access checks and the stored bytes)."""

    uploads: UploadService

    def get(self, identity: Identity, bag_id: str) -> BagRecord:
        bag = self.uploads.state.get_bag(bag_id) if bag_id.isalnum() and len(bag_id) <= 64 else None
        if bag is None or not identity.may_access(bag.owner):
            msg = f"bag {bag_id} not found"
            raise NotFound(msg)
        return bag

    def downloads(self, identity: Identity, bag: BagRecord) -> list[Download]:
        """Every file of the bag, opened through the upload download path (a missing one is a 404 now)."""
        return [self.uploads.download(identity, f.upload_id, raw=False) for f in bag.files]

    def delete(self, identity: Identity, bag_id: str) -> BagRecord:
        """Delete a bag: its catalogue entry, its uploads (marked deleted) and their stored files.

        A stored file shared with another complete upload (deduplication) is kept for that upload.
        """
        if not identity.admin:
            msg = "only an admin key may delete a bag"
            raise Forbidden(msg)
        bag = self.get(identity, bag_id)
        state, blobs, now = self.uploads.state, self.uploads.blobs, self.uploads.clock()
        removed = 0
        for facts in bag.files:
            record = state.transition(
                facts.upload_id,
                (UploadState.COMPLETE,),
                now,
                state=UploadState.ABORTED,
                error_code=ErrorCode.BAG_DELETED.value,
                error_message=f"bag {bag.name} deleted by {identity.name}",
            )
            if record is None or record.blob_id is None:
                continue
            if self.uploads.blob_sharer(record) is not None:
                continue
            blobs.delete(record.blob_id)
            removed += 1
        state.delete_bag(bag_id)
        log.warning(
            "Deleted bag %s (%s, robot %s) by %s: %d file(s), %d stored file(s) removed, %d bytes",
            bag_id,
            bag.name,
            bag.robot_id,
            identity.name,
            len(bag.files),
            removed,
            bag.stored_size,
        )
        return bag


def tar_size(folder: str, downloads: list[Download]) -> int:
    return sum(len(_member_header(folder, d)) + _padded(d.size) for d in downloads) + 2 * _BLOCK


def _padded(size: int) -> int:
    return -(-size // _BLOCK) * _BLOCK


def _member_header(folder: str, download: Download) -> bytes:
    info = tarfile.TarInfo(f"{folder}/{download.record.filename}")
    info.size = download.size
    info.mtime = int(download.record.updated_at)
    info.mode = 0o644
    return info.tobuf(format=tarfile.PAX_FORMAT)


def iter_tar(folder: str, downloads: list[Download]) -> Iterator[bytes]:
    """A tar of ``folder/<file>`` for each download, one stored piece at a time."""
    for download in downloads:
        yield _member_header(folder, download)
        sent = 0
        for piece in download.chunks():
            sent += len(piece)
            yield piece
        if sent != download.size:
            # Never send a tar that silently differs from the verified files: cut the reply short.
            msg = f"{download.record.filename}: stored file gave {sent} bytes, expected {download.size}"
            raise OSError(msg)
        yield b"\0" * (_padded(sent) - sent)
    yield b"\0" * (2 * _BLOCK)


bags_api = Blueprint("bags_api", __name__)


def bag_service() -> BagService:
    return BagService(current_app.extensions["upload_service"])


@bags_api.get(BAGS_PATH)
def list_bags() -> tuple[Response, int]:
    return jsonify(bag_page(current_identity())), 200


def bag_page(identity: Identity) -> dict[str, Any]:
    """One page of ``GET /bags`` for the request's filters (the API's listing and the dashboard's)."""
    query = parse_query(request.args, identity)
    found, total = bag_service().uploads.state.list_bags(query)
    bags = [describe(bag, detailed=False) for bag in found]
    return {"success": True, "bags": bags, "total": total, "limit": query.limit, "offset": query.offset}


@bags_api.get(BAG_PATH)
def get_bag(bag_id: str) -> tuple[Response, int]:
    bag = bag_service().get(current_identity(), bag_id)
    return jsonify({"success": True, **describe(bag, detailed=True)}), 200


@bags_api.delete(BAG_PATH)
def delete_bag(bag_id: str) -> tuple[Response, int]:
    bag = bag_service().delete(current_identity(), bag_id)
    return jsonify({"success": True, "deleted": describe(bag, detailed=True)}), 200


def tar_response(identity: Identity, bag_id: str) -> Response:
    """The bag as a streamed tar reply (the API's download and the dashboard's)."""
    service = bag_service()
    bag = service.get(identity, bag_id)
    downloads = service.downloads(identity, bag)
    folder = bag.name.replace("/", "_") or bag.bag_id
    headers = {
        "Content-Length": str(tar_size(folder, downloads)),
        "Content-Disposition": _attachment(f"{folder}.tar"),  # the one Content-Disposition spelling
    }
    log.info("Bag download %s (%s) by %s: %d file(s)", bag_id, bag.name, identity.name, len(downloads))
    return Response(iter_tar(folder, downloads), mimetype="application/x-tar", headers=headers, direct_passthrough=True)


@bags_api.get(BAG_DOWNLOAD_PATH)
def download_bag(bag_id: str) -> Response:
    return tar_response(current_identity(), bag_id)


@click.group("bags", help="The bag catalogue.")
def bags_cli() -> None:
    pass


@bags_cli.command("delete")
@click.argument("bag_id")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@with_appcontext
def delete_command(bag_id: str, *, yes: bool) -> None:
    """Delete a bag: its catalogue entry, its uploads and their stored files (logged as an admin action)."""
    service = bag_service()
    bag = service.get(CLI_IDENTITY, bag_id)
    if not yes:
        what = f"bag {bag.name} of {bag.robot_id} ({len(bag.files)} file(s), {bag.size} bytes)"
        click.confirm(f"Delete {what}?", abort=True)
    service.delete(CLI_IDENTITY, bag_id)
    click.echo(f"deleted bag {bag_id} ({bag.name}): {len(bag.files)} file(s)")


def init_app(app: Flask) -> None:
    app.register_blueprint(bags_api)
    app.cli.add_command(bags_cli)
