"""The `model` field of a multipart/form-data body (the audio routes), found by python-multipart.

The body is read whole first, within `limits.max_body_bytes` like every body (a form's `model`
may come after its file part), parsed once by python-multipart's streaming parser, and
forwarded byte for byte: only the `model` field's value is replaced when an alias or a
`served_name` needs it. Every malformed form is a 400 that says what is wrong; the parser's
own limits (header count and size per part) stay on. Stateless.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from proxy.errors import InvalidRequestError

MAX_MODEL_FIELD = 1024  # bytes; a longer `model` is refused before it is decoded
TRUE = frozenset({b"true", b"1", b"yes", b"on", b"t", b"y"})  # pydantic's true strings


@dataclass
class _Part:
    name: bytes | None = None
    start: int = -1
    end: int = -1
    size: int = 0


@dataclass
class FormFields:
    """What the proxy reads of a form: `model` (None when absent) and where its value lies."""

    model: str | None = None
    span: tuple[int, int] | None = None
    stream: bool = False
    names: list[str] = field(default_factory=list)


def boundary_of(content_type: str | None) -> bytes:
    if content_type is None:
        raise InvalidRequestError("this route takes multipart/form-data; Content-Type is missing")
    kind, params = parse_options_header(content_type)
    if kind != b"multipart/form-data":
        raise InvalidRequestError(
            f"this route takes multipart/form-data, not {kind.decode('latin-1')[:100]!r}"
        )
    boundary = params.get(b"boundary")
    if not boundary or len(boundary) > 70:  # RFC 2046: 1 to 70 characters
        raise InvalidRequestError("multipart/form-data needs a boundary of 1 to 70 characters")
    return boundary


def read_form(body: bytes, content_type: str | None) -> FormFields:
    """Parse `body` once; the `model` and `stream` fields, and every field's name."""
    parts: list[_Part] = []
    header: dict[str, bytes] = {"field": b"", "value": b""}
    values: dict[bytes, bytes] = {}

    def on_part_begin() -> None:
        parts.append(_Part())

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header["value"] += data[start:end]

    def on_header_end() -> None:
        if header["field"].lower() == b"content-disposition":
            _, params = parse_options_header(header["value"])
            parts[-1].name = params.get(b"name")
        header["field"], header["value"] = b"", b""

    def on_part_data(data: bytes, start: int, end: int) -> None:
        part = parts[-1]
        if part.start < 0:
            part.start = start
        part.end, part.size = end, part.size + (end - start)
        if part.name in (b"model", b"stream") and part.size <= MAX_MODEL_FIELD:
            values[part.name] = values.get(part.name, b"") + data[start:end]

    parser = MultipartParser(
        boundary_of(content_type),
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_part_data": on_part_data,
        },
    )
    try:
        parser.write(body)
        parser.finalize()
    except FormParserError as exc:
        raise InvalidRequestError(f"malformed multipart/form-data body: {exc}") from None
    if not parts:
        raise InvalidRequestError("multipart/form-data body has no parts")
    return _fields(parts, values)


def _fields(parts: list[_Part], values: dict[bytes, bytes]) -> FormFields:
    out = FormFields(names=[(p.name or b"").decode("latin-1") for p in parts])
    models = [p for p in parts if p.name == b"model"]
    if len(models) > 1:
        raise InvalidRequestError("the form has more than one `model` field", param="model")
    if models:
        part = models[0]
        if part.size > MAX_MODEL_FIELD:
            raise InvalidRequestError("the form's `model` field is too long", param="model")
        try:
            out.model = values.get(b"model", b"").decode()
        except UnicodeDecodeError:
            raise InvalidRequestError("the form's `model` is not UTF-8", param="model") from None
        # an empty value has no data callback, so no span (resolve() refuses an empty model)
        out.span = (part.start, part.end) if part.start >= 0 else None
    if len([p for p in parts if p.name == b"stream"]) > 1:
        raise InvalidRequestError("the form has more than one `stream` field", param="stream")
    out.stream = values.get(b"stream", b"").strip().lower() in TRUE
    return out


def with_form_model(body: bytes, form: FormFields, model: str) -> bytes:
    """The body as the backend must see it: the same bytes unless `model` needs rewriting."""
    if form.model == model or form.span is None:
        return body
    start, end = form.span
    return body[:start] + model.encode() + body[end:]
