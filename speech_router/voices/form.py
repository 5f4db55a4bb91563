"""An upload's ``multipart/form-data`` body, read within limits (python-multipart, through Starlette's parser).

The body is counted as it arrives: a declared ``Content-Length`` over the limit is refused before a
byte is read, and a body that grows past it is refused the moment it does, so a client cannot make
the router hold more than ``max_bytes`` (the file part spools to a temporary file past 1 MB). Text
fields are small (``MAX_FIELD_BYTES``) and few; one file. Every refusal is a ``RequestInvalid`` that
names the field when there is one.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request

from ..errors import ClientDisconnected, RequestInvalid

#: the multipart framing and text fields around the file
FORM_OVERHEAD_BYTES = 64 * 1024
MAX_FIELD_BYTES = 4096
MAX_FIELDS = 8


class _TooLarge(MultiPartException):
    """The body grew past its limit (a ``MultiPartException``, so the parser closes its temporary files)."""


@dataclass
class UploadForm:
    """The fields of an upload: text fields by name, and the file's bytes, name and declared type."""

    fields: dict[str, str]
    file_field: str | None
    filename: str
    content_type: str | None
    data: bytes


async def read_upload(request: Request, *, file_field: str, max_bytes: int) -> UploadForm:
    """Parse the body as a form with at most one file (``file_field``) of at most ``max_bytes``."""
    kind = request.headers.get("content-type", "")
    if not kind.lower().startswith("multipart/form-data"):
        raise RequestInvalid(f"Send the voice as multipart/form-data with the audio file in '{file_field}', not "
                             f"{kind.split(';')[0] or 'a body without a Content-Type'}.", param=None,
                             code="invalid_content_type")
    limit = max_bytes + FORM_OVERHEAD_BYTES
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large(file_field, max_bytes)
    parser = MultiPartParser(request.headers, _capped(request, limit), max_files=1, max_fields=MAX_FIELDS,
                             max_part_size=MAX_FIELD_BYTES)
    try:
        form = await parser.parse()
    except _TooLarge:
        raise too_large(file_field, max_bytes) from None
    except MultiPartException as exc:
        raise RequestInvalid(f"The form could not be read: {exc.message}", param=None, code="invalid_form") from None
    try:
        fields = {k: v for k, v in form.multi_items() if isinstance(v, str)}
        upload = next(((k, v) for k, v in form.multi_items() if isinstance(v, UploadFile)), None)
        if upload is None:
            return UploadForm(fields, None, "", None, b"")
        name, file = upload
        data = await file.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise too_large(name, max_bytes)
        return UploadForm(fields, name, file.filename or "", file.content_type, data)
    finally:
        await form.close()


def too_large(field: str, max_bytes: int) -> RequestInvalid:
    return RequestInvalid(f"Invalid '{field}': the file is larger than the {max_bytes} byte limit.", param=field,
                          code="file_too_large")


async def _capped(request: Request, limit: int) -> AsyncGenerator[bytes, None]:
    seen = 0
    try:
        async for chunk in request.stream():
            seen += len(chunk)
            if seen > limit:
                raise _TooLarge("too large")
            yield chunk
    except ClientDisconnect:
        raise ClientDisconnected("the client left during its upload") from None
