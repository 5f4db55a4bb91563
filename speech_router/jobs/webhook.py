"""Completion webhooks, signed as Standard Webhooks (standardwebhooks.com) sign them.

Headers: ``webhook-id`` (the same on every try of one event, so a receiver can drop a repeat), ``webhook-
timestamp`` (Unix seconds) and ``webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">``. The
key is the secret's bytes, or for a ``whsec_`` secret the base64 after that prefix (as the Standard Webhooks
libraries read it). Sent with the standard library on a worker thread, redirects not followed (the URL was
checked against ``jobs.webhooks.url_prefixes``; a redirect could lead anywhere), up to ``attempts`` tries
until a 2xx, 1 s apart and doubling.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import urllib.error
import urllib.request
from typing import Any

log = logging.getLogger("speech_router.jobs")
FIRST_RETRY_S = 1.0
USER_AGENT = "speech-router-webhook"


def signing_key(secret: str) -> bytes:
    if secret.startswith("whsec_"):
        try:
            return base64.b64decode(secret.removeprefix("whsec_"), validate=True)
        except ValueError:
            pass
    return secret.encode()


def signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def _post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> int:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return int(exc.code)


async def deliver(url: str, body: bytes, msg_id: str, key: bytes, *, attempts: int, timeout: float,
                  clock: Any = None) -> bool:
    """POST ``body`` until a 2xx; False after ``attempts`` tries. ``clock`` gives the Unix time to sign with."""
    import time

    now = clock or time.time
    wait = FIRST_RETRY_S
    for attempt in range(1, attempts + 1):
        timestamp = int(now())
        headers = {"content-type": "application/json", "user-agent": USER_AGENT, "webhook-id": msg_id,
                   "webhook-timestamp": str(timestamp), "webhook-signature": signature(key, msg_id, timestamp, body)}
        try:
            status = await asyncio.to_thread(_post, url, body, headers, timeout)
        except (OSError, ValueError) as exc:  # refused, reset, timed out, a URL urllib cannot send to
            status, why = 0, type(exc).__name__
        else:
            why = f"HTTP {status}"
        if 200 <= status < 300:
            return True
        log.warning("webhook %s: try %d of %d failed (%s)", msg_id, attempt, attempts, why)
        if attempt < attempts:
            await asyncio.sleep(wait)
            wait *= 2
    return False
