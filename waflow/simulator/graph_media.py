"""Meta's media endpoints, as waflow's media stage and sender call them (reference §5).

- ``POST /<version>/<phone_number_id>/media`` (multipart ``file``, ``type``, ``messaging_product``):
  Meta's MIME types per kind (code 100 otherwise) and size limits per kind (131053); ``{"id"}``.
- ``GET /<version>/<media-id>``: ``{messaging_product, url, mime_type, sha256, file_size, id}``,
  the URL valid 5 minutes and built on the configured base URL; code 100 for an id Meta no longer
  has (unknown, deleted, or past its 7 days inbound / 30 days uploaded).
- ``DELETE /<version>/<media-id>``: ``{"success": true}``.
- ``GET <media URL>`` with the Bearer token: the bytes (401 without it, 404 for an expired or
  tampered URL).

Media faults (``media_faults``, queued by ``POST /_sim/media/faults``) change the look-up and the
download; a download cut or streamed is written in chunks, so no fault holds a large body in memory.
"""
from __future__ import annotations

import itertools
import socket
from typing import Iterator

from flask import Blueprint, Response, request

from waflow.simulator.errors import MetaError, invalid, missing
from waflow.simulator.httpkit import authorize, check_version, client_socket, error_response, json_response, shut
from waflow.simulator.media import DOWNLOAD_PATH, LIMITS, UPLOAD_TTL, Media, accepted_types, kind_of
from waflow.simulator.media_faults import MediaFault
from waflow.simulator.state import Simulator, current_simulator

bp = Blueprint("simulator_graph_media", __name__)
CHUNK = 2**20


@bp.post("/<version>/<phone_number_id>/media")
def upload_media(version: str, phone_number_id: str) -> Response:
    """Store an upload and answer its id."""
    check_version(version)
    sim = current_simulator()
    try:
        authorize(sim)
        if request.form.get("messaging_product") != "whatsapp":
            raise MetaError(100, 'messaging_product must be "whatsapp"')
        upload = request.files.get("file")
        if upload is None:
            raise missing("file")
        mime_type = request.form.get("type") or upload.mimetype
        if not mime_type or "/" not in mime_type:
            raise missing("type")
        kind = kind_of(mime_type)
        if kind is None:
            raise MetaError(100, f"Param file must be a file with one of the following types: {accepted_types()}. "
                                 f"Received file of type '{mime_type}'.")
        data = upload.read()
        if not data:
            raise invalid("file", "is empty")
        if len(data) > LIMITS[kind]:
            raise MetaError(131053, f"file is {len(data)} bytes; {kind} uploads are limited to {LIMITS[kind]} bytes")
    except MetaError as exc:
        return error_response(exc)
    return json_response({"id": sim.media.put(data, mime_type, UPLOAD_TTL).id})


@bp.get("/<version>/<media_id>")
def media_info(version: str, media_id: str) -> Response:
    """A media id's short-lived URL, type, base64 SHA-256 and size."""
    check_version(version)
    sim = current_simulator()
    try:
        authorize(sim)
        media = _media(sim, media_id)
    except MetaError as exc:
        return error_response(exc)
    fault = sim.media_faults.take(media.id, "info")
    return json_response({"messaging_product": "whatsapp", "url": sim.media.url_for(media, sim.options.base_url),
                          "mime_type": media.mime_type, "sha256": media.sha256,
                          "file_size": fault.announce_size if fault else media.size, "id": media.id})


@bp.delete("/<version>/<media_id>")
def delete_media(version: str, media_id: str) -> Response:
    check_version(version)
    sim = current_simulator()
    try:
        authorize(sim)
        _media(sim, media_id)
    except MetaError as exc:
        return error_response(exc)
    sim.media.delete(media_id)
    return json_response({"success": True})


def _media(sim: Simulator, media_id: str) -> Media:
    media = sim.media.get(media_id)
    if media is None:
        raise MetaError(100, f"Unsupported request: object with id '{media_id}' does not exist")
    return media


@bp.get(f"/{DOWNLOAD_PATH}")
def download_media() -> Response:
    """The bytes behind a media URL: Bearer token required (401), expired or tampered URL → 404."""
    sim = current_simulator()
    try:
        authorize(sim)
    except MetaError as exc:
        return error_response(exc)
    args = request.args
    fault = sim.media_faults.take(args.get("mid", ""), "download")
    if fault is not None and fault.download_status is not None:
        return _status(fault.download_status)
    media = sim.media.open(args.get("mid", ""), args.get("ext", ""), args.get("hash", ""))
    if media is None:
        return _status(404)
    if fault is None:
        return Response(media.data, content_type=media.mime_type)
    return _faulty_download(fault, media)


def _status(status: int) -> Response:
    if status == 401:
        return error_response(MetaError(190, "the media URL needs the Bearer access token"))
    if status == 404:
        return Response("Not Found", status=404, mimetype="text/plain")
    response = Response(b"", status=status)
    del response.headers["Content-Type"]
    return response


def _faulty_download(fault: MediaFault, media: Media) -> Response:
    """A download changed by a body fault: bytes that fail their SHA-256, a cut, an overlong stream."""
    if fault.sha256_mismatch:
        return Response(bytes([media.data[0] ^ 0xFF]) + media.data[1:], content_type=media.mime_type)
    if fault.cut_after is not None:
        response = Response(_cut(media.data, fault.cut_after, client_socket()), content_type=media.mime_type)
        response.headers["Content-Length"] = str(media.size)
        return response
    return Response(_generated(fault.stream_bytes), content_type=media.mime_type)


def _cut(data: bytes, after: int, sock: socket.socket) -> Iterator[bytes]:
    """``after`` bytes of ``data``, then the connection shut: the client sees a body cut short."""
    for start in range(0, min(after, len(data)), CHUNK):
        yield data[start:min(start + CHUNK, after)]
    # The server asks for the next chunk only once the last one is written: shut the socket now.
    shut(sock)


def _generated(total: int) -> Iterator[bytes]:
    """``total`` bytes in 1 MiB chunks, the same block each time: constant memory however long."""
    block = bytes(range(256)) * (CHUNK // 256)
    full, rest = divmod(total, CHUNK)
    yield from itertools.repeat(block, full)
    if rest:
        yield block[:rest]
