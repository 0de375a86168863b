"""Reading the files of a ``multipart/form-data`` upload into memory, under size limits.

Starlette's own form parser (``request.form()``) spools every file over 1 MB to a temporary file on
disk and knows no per-file or per-request byte limit, so the app parses the body itself, with
python-multipart's streaming parser: each part is collected in memory, every byte is counted as it
arrives (a chunked body or a lying ``Content-Length`` cannot get past the limit) and reading stops at
the first byte over a limit. The client's file name is kept as data only: echoed back, never a path.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

log = logging.getLogger(__name__)

FIELD = "file"  # the form field whose parts are images; other fields are read and dropped
NAME_CHARS = 255  # a client's file name is cut to this many characters before it is echoed
# After a limit is crossed the rest of the body is read and dropped (up to this much, for at most this long)
# before the 413 is sent: a server that closes a connection with unread bytes in it makes the kernel reset
# it, and the client then sees "connection reset" instead of the message.
DRAIN_BYTES = 64 * 1024 * 1024
DRAIN_SECONDS = 5.0


@dataclass(frozen=True)
class Limits:
    """What one ``POST /predict`` may send."""

    max_file_bytes: int = 10 * 1024 * 1024
    max_request_bytes: int = 32 * 1024 * 1024
    max_files: int = 16

    def __str__(self) -> str:
        """How the log says it: ``10 MB a file, 32 MB a request, 16 files``."""
        mb = 1024 * 1024
        return (
            f"{self.max_file_bytes / mb:g} MB a file, {self.max_request_bytes / mb:g} MB a request, "
            f"{self.max_files} files"
        )


@dataclass
class Upload:
    """One uploaded file: its bytes, and the client's name for it (data to echo back, never a path)."""

    name: str
    data: bytes


class UploadError(Exception):
    """The request cannot be read as an upload: ``status`` is the HTTP status to answer, the message says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class _Part:
    headers: dict[bytes, bytes] = field(default_factory=dict)
    chunks: list[bytes] = field(default_factory=list)
    size: int = 0
    is_file: bool = False
    name: str = ""


class _Collector:
    """python-multipart callbacks that keep the ``file`` parts in memory and enforce the per-file limits."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.files: list[Upload] = []
        self.ended = False
        self._part = _Part()
        self._header_field = bytearray()
        self._header_value = bytearray()

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._begin,
            "on_header_field": self._field,
            "on_header_value": self._value,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._data,
            "on_part_end": self._end,
            "on_end": self._finish,
        }

    def _begin(self) -> None:
        self._part = _Part()

    def _field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def _value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        self._part.headers[bytes(self._header_field).lower()] = bytes(self._header_value)
        self._header_field.clear()
        self._header_value.clear()

    def _headers_finished(self) -> None:
        kind, options = parse_options_header(self._part.headers.get(b"content-disposition", b""))
        part = self._part
        part.is_file = kind == b"form-data" and options.get(b"name") == FIELD.encode()
        if part.is_file:
            if len(self.files) >= self.limits.max_files:
                raise UploadError(
                    413,
                    f"more than {self.limits.max_files} files in one request (the server's "
                    "--max-files); send them in several requests",
                )
            part.name = options.get(b"filename", b"").decode("utf-8", "replace")[:NAME_CHARS]

    def _data(self, data: bytes, start: int, end: int) -> None:
        part = self._part
        part.size += end - start
        if not part.is_file:
            return  # another form field: counted against the request limit by the reader, not kept
        if part.size > self.limits.max_file_bytes:
            raise UploadError(
                413,
                f"file {len(self.files) + 1} is over the limit of {_mb(self.limits.max_file_bytes)} "
                "per file (the server's --max-upload-mb)",
            )
        part.chunks.append(data[start:end])

    def _end(self) -> None:
        if self._part.is_file:
            self.files.append(Upload(self._part.name, b"".join(self._part.chunks)))
        self._part = _Part()

    def _finish(self) -> None:
        self.ended = True


def boundary_of(content_type: str) -> bytes:
    """The multipart boundary of a ``Content-Type`` header.

    Raises:
        UploadError: 415 when the body is not ``multipart/form-data`` with a boundary.
    """
    kind, options = parse_options_header(content_type)
    if kind != b"multipart/form-data" or not options.get(b"boundary"):
        shown = content_type[:80] or "none"
        raise UploadError(
            415,
            f"expected a multipart/form-data upload with the images in field {FIELD!r} "
            f"(Content-Type was {shown!r}), e.g. curl -F {FIELD}=@photo.jpg",
        )
    return options[b"boundary"]


async def read_uploads(
    headers: dict[str, str], body: AsyncIterator[bytes], limits: Limits, hold: Callable[[int], None] | None = None
) -> list[Upload]:
    """The ``file`` parts of a multipart body, in upload order, each in memory.

    Args:
        headers: the request's headers (lower-case names).
        body: the body as it arrives (Starlette's ``request.stream()``).
        limits: the byte and file-count limits; the body is counted as it streams, whatever its
            ``Content-Length`` says.
        hold: called with the size of each chunk before it is kept (the server's memory for bodies);
            it may refuse it with an :class:`UploadError`.

    Raises:
        UploadError: 415 not multipart; 413 over a limit, or what ``hold`` refuses (the rest of the
            body is drained first, up to :data:`DRAIN_BYTES`); 400 a malformed or truncated body, or
            no ``file`` part; what ``body`` raises (408 too slow).
    """
    boundary = boundary_of(headers.get("content-type", ""))
    declared = headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limits.max_request_bytes:
        error = _request_too_large(limits)
        if int(declared) <= limits.max_request_bytes + DRAIN_BYTES:
            await _drain(body)
        raise error
    collector = _Collector(limits)
    parser = MultipartParser(boundary, collector.callbacks())
    received = 0
    try:
        async for chunk in body:
            received += len(chunk)
            if received > limits.max_request_bytes:
                raise _request_too_large(limits)
            if hold is not None:
                hold(len(chunk))
            parser.write(chunk)
        parser.finalize()
    except UploadError as exc:
        if exc.status in (413, 503):  # refused for its size, not its pace: the client is waiting for the answer
            await _drain(body)
        raise
    except FormParserError as exc:
        raise UploadError(400, f"the multipart body cannot be parsed ({exc})") from exc
    if not collector.ended:
        raise UploadError(
            400,
            f"the upload ended after {received} bytes, before its multipart body did "
            "(a truncated request, or a Content-Length that does not match the body)",
        )
    if not collector.files:
        raise UploadError(
            400, f"no file in the upload: send each image as a part named {FIELD!r}, e.g. curl -F {FIELD}=@photo.jpg"
        )
    return collector.files


def _request_too_large(limits: Limits) -> UploadError:
    return UploadError(
        413,
        f"the request is over the limit of {_mb(limits.max_request_bytes)} "
        "(the server's --max-request-mb); send fewer or smaller files per request",
    )


async def _drain(body: AsyncIterator[bytes]) -> None:
    """Read and drop what is left of the body, within :data:`DRAIN_BYTES` and :data:`DRAIN_SECONDS`."""
    dropped, deadline = 0, time.monotonic() + DRAIN_SECONDS
    try:
        async for chunk in body:
            dropped += len(chunk)
            if dropped > DRAIN_BYTES or time.monotonic() > deadline:
                break
    except Exception as exc:  # noqa: BLE001  the client went away: nothing more to read, the answer stands
        log.debug("stopped draining a refused upload: %s", exc)


def _mb(size: int) -> str:
    return f"{size / (1024 * 1024):g} MB"
