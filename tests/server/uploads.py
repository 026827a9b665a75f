"""Helpers that speak the upload protocol to a Flask test client, so tests read as steps of the protocol."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from core.checksums import ChunkChecksum, content_md5
from core.protocol import HEADER_CONTENT_MD5, ChunkAlgorithm, chunk_count


def identity_header(name: str, *, admin: bool = False) -> dict[str, str]:
    """Who the test app believes is calling (see ``make_app`` in conftest)."""
    return {"X-Test-Identity": f"{name}:{'admin' if admin else 'robot'}"}


@dataclass
class Upload:
    """One file going through init → chunks → finalize against a test client."""

    client: FlaskClient
    data: bytes
    chunk_size: int
    filename: str = "test.bag"
    headers: dict[str, str] = field(default_factory=dict)
    upload_id: str = ""
    reply: dict[str, Any] = field(default_factory=dict)

    @property
    def chunks(self) -> int:
        return chunk_count(len(self.data), self.chunk_size)

    def body(self, **extra: Any) -> dict[str, Any]:
        return {
            "filename": self.filename,
            "filesize": len(self.data),
            "chunks": self.chunks,
            "chunk_size": self.chunk_size,
            "checksum": hashlib.md5(self.data, usedforsecurity=False).hexdigest(),
            "sha256": hashlib.sha256(self.data).hexdigest(),
            **extra,
        }

    def init(self, **extra: Any) -> TestResponse:
        response = self.client.post("/upload/init", json=self.body(**extra), headers=self.headers)
        if response.status_code in (200, 201):
            self.reply = response.get_json()
            self.upload_id = self.reply["upload_id"]
        return response

    def piece(self, index: int) -> bytes:
        return self.data[index * self.chunk_size : (index + 1) * self.chunk_size]

    def send(
        self,
        index: int,
        body: bytes | None = None,
        *,
        md5: bool = False,
        algorithm: ChunkAlgorithm | None = ChunkAlgorithm.SHA256,
        **headers: str,
    ) -> TestResponse:
        """PUT chunk ``index`` (or ``body`` in its place) with its checksum by ``algorithm`` (None: no checksum)."""
        data = self.piece(index) if body is None else body
        declared = {} if algorithm is None else {(c := ChunkChecksum.of(algorithm, (data,))).header: c.hexdigest}
        sent = {**declared, **self.headers, **headers}
        if md5:
            sent[HEADER_CONTENT_MD5] = content_md5(data)
        return self.client.put(f"/upload/{self.upload_id}/chunk/{index}", data=data, headers=sent)

    def send_all(self) -> None:
        for index in range(self.chunks):
            response = self.send(index)
            assert response.status_code in (200, 201), response.get_json()

    def finalize(self, body: dict[str, Any] | None = None) -> TestResponse:
        url = f"/upload/{self.upload_id}/finalize"
        return self.client.post(url, headers=self.headers, **({} if body is None else {"json": body}))

    def status(self) -> dict[str, Any]:
        """The status document; an aborted (expired, deleted) upload is gone: 410, the document still in the reply."""
        response = self.client.get(f"/upload/{self.upload_id}", headers=self.headers)
        body = dict(response.get_json())
        assert response.status_code == (410 if body.get("state") == "aborted" else 200), body
        return body

    def download(self, *, raw: bool = False) -> TestResponse:
        suffix = "?raw=1" if raw else ""
        return self.client.get(f"/uploads/{self.upload_id}/file{suffix}", headers=self.headers)


def assert_error(response: TestResponse, status: int, code: str) -> dict[str, Any]:
    """The reply is the documented JSON error with this status and code."""
    body = response.get_json()
    assert response.status_code == status, body
    assert body["success"] is False
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    return dict(body["error"])
