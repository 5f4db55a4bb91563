"""A small urllib client for tests that check status codes, headers and error bodies exactly."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any


@dataclass
class Reply:
    status: int
    headers: Any
    body: bytes

    def json(self) -> Any:
        assert self.headers["content-type"].startswith("application/json"), (self.status, self.headers)
        return json.loads(self.body)


def call(url: str, body: Any = None, *, raw: bytes | None = None, method: str | None = None,
         headers: dict[str, str] | None = None, key: str | None = None) -> Reply:
    """One request: ``body`` as JSON (or ``raw`` bytes), POST when there is a body; any status comes back."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    all_headers = {"Content-Type": "application/json", **(headers or {})}
    if key is not None:
        all_headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(url, data=data, method=method or ("POST" if data is not None else "GET"),
                                 headers=all_headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return Reply(resp.status, resp.headers, resp.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return Reply(exc.code, exc.headers, exc.read())
