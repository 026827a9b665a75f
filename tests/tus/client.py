"""A tus 1.0.0 conversation with a Flask test client, so tests read as steps of the protocol."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field
from typing import Any

from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from core.server.tus.protocol import (
    HEADER_TUS_RESUMABLE,
    HEADER_UPLOAD_CHECKSUM,
    HEADER_UPLOAD_CONCAT,
    HEADER_UPLOAD_DEFER_LENGTH,
    HEADER_UPLOAD_LENGTH,
    HEADER_UPLOAD_METADATA,
    HEADER_UPLOAD_OFFSET,
    OFFSET_CONTENT_TYPE,
    TUS_COLLECTION_PATH,
    TUS_VERSION,
)

TUS = {HEADER_TUS_RESUMABLE: TUS_VERSION}


def encode_metadata(meta: dict[str, str]) -> str:
    return ",".join(f"{key} {base64.b64encode(value.encode()).decode()}" for key, value in meta.items())


def upload_checksum(algorithm: str, data: bytes) -> str:
    return f"{algorithm} {base64.b64encode(hashlib.new(algorithm, data).digest()).decode()}"


@dataclass
class TusUpload:
    """One file sent to /files/ through a test client."""

    client: FlaskClient
    data: bytes
    headers: dict[str, str] = field(default_factory=dict)
    url: str = ""

    @property
    def upload_id(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    def create(
        self, *, declare_sha256: bool = True, body: bytes = b"", defer_length: bool = False, **extra: str
    ) -> TestResponse:
        """POST /files/; ``defer_length``: Upload-Defer-Length instead of Upload-Length (sent later in a PATCH)."""
        meta = {"filename": "robot.mcap"}
        if declare_sha256:
            meta["sha256"] = hashlib.sha256(self.data).hexdigest()
        length = {HEADER_UPLOAD_DEFER_LENGTH: "1"} if defer_length else {HEADER_UPLOAD_LENGTH: str(len(self.data))}
        headers = {
            **TUS,
            **self.headers,
            **length,
            HEADER_UPLOAD_METADATA: encode_metadata(meta),
            **extra,
        }
        if body:
            headers["Content-Type"] = OFFSET_CONTENT_TYPE
        response = self.client.post(TUS_COLLECTION_PATH, headers=headers, data=body)
        if response.status_code == 201:
            self.url = "/files/" + response.headers["Location"].rsplit("/", 1)[-1]
        return response

    def patch(self, offset: int, end: int | None = None, *, body: bytes | None = None, **extra: str) -> TestResponse:
        data = self.data[offset:end] if body is None else body
        headers = {
            **TUS,
            **self.headers,
            HEADER_UPLOAD_OFFSET: str(offset),
            "Content-Type": OFFSET_CONTENT_TYPE,
            **extra,
        }
        return self.client.patch(self.url, data=data, headers=headers)

    def patch_checked(self, offset: int, end: int | None, algorithm: str, *, body: bytes | None = None) -> TestResponse:
        """A PATCH whose Upload-Checksum is of the true bytes [offset, end), with ``body`` sent instead if given."""
        return self.patch(
            offset, end, body=body, **{HEADER_UPLOAD_CHECKSUM: upload_checksum(algorithm, self.data[offset:end])}
        )

    def head(self) -> TestResponse:
        return self.client.head(self.url, headers={**TUS, **self.headers})

    def offset(self) -> int:
        response = self.head()
        assert response.status_code == 200, response.status_code
        return int(response.headers[HEADER_UPLOAD_OFFSET])

    def delete(self) -> TestResponse:
        return self.client.delete(self.url, headers={**TUS, **self.headers})

    def status(self) -> dict[str, Any]:
        return dict(self.client.get(f"/upload/{self.upload_id}", headers=self.headers).get_json())


def final_upload(client: FlaskClient, parts: list[TusUpload], data: bytes, **headers: str) -> TestResponse:
    concat = "final;" + " ".join(part.url for part in parts)
    meta = encode_metadata({"filename": "joined.mcap", "sha256": hashlib.sha256(data).hexdigest()})
    return client.post(
        TUS_COLLECTION_PATH, headers={**TUS, **headers, HEADER_UPLOAD_CONCAT: concat, HEADER_UPLOAD_METADATA: meta}
    )
