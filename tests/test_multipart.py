"""Finding the model field of a multipart body as it arrives, in any split (pure)."""

from __future__ import annotations

import httpx
import pytest

from orchestrator.multipart import MAX_VALUE_BYTES, FieldFinder, MultipartError, boundary_of


def encoded(data: dict[str, str], files: dict[str, bytes]) -> tuple[bytes, bytes]:
    """A body as httpx (so the openai client) encodes it, and its boundary."""
    request = httpx.Request("POST", "http://x", data=data, files={k: ("f.wav", v) for k, v in files.items()})
    return request.read(), boundary_of(request.headers["content-type"])


def fed(body: bytes, boundary: bytes, step: int) -> FieldFinder:
    finder = FieldFinder(boundary, "model")
    for start in range(0, len(body), step):
        finder.feed(body[start : start + step])
        if finder.value is not None:
            break
    return finder


@pytest.mark.parametrize("step", [1, 2, 7, 64, 1 << 20])
def test_the_model_field_is_found_however_the_body_is_split(step: int) -> None:
    body, boundary = encoded({"model": "whisper", "language": "en"}, {"file": b"RIFF" + bytes(3000)})
    finder = fed(body, boundary, step)
    assert finder.value == "whisper"
    # It is found in the first part: what came before it is all that was needed.
    assert body.index(b"whisper") < body.index(b"RIFF")


def test_a_field_after_the_file_is_found_too_and_a_body_without_it_ends() -> None:
    boundary = b"xyz"
    parts = [
        b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n' + bytes(500),
        b'--xyz\r\nContent-Disposition: form-data; name="model"\r\n\r\nlate',
        b"--xyz--\r\n",
    ]
    assert fed(b"\r\n".join(parts), boundary, 10).value == "late"
    without = b"\r\n".join([parts[0], parts[2]])
    finder = fed(without, boundary, 10)
    assert finder.value is None and finder.ended


def test_bad_bodies_say_what_is_wrong() -> None:
    with pytest.raises(MultipartError, match="expected a multipart/form-data body with a boundary"):
        boundary_of("application/json")
    with pytest.raises(MultipartError):
        boundary_of("multipart/form-data")
    assert boundary_of('multipart/form-data; boundary="a b"') == b"a b"
    huge = b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\n' + b"m" * (MAX_VALUE_BYTES + 1)
    with pytest.raises(MultipartError, match="over 1024 bytes"):
        FieldFinder(b"b", "model").feed(huge)
    bad = b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\n\xff\xfe\r\n--b--'
    with pytest.raises(MultipartError, match="not UTF-8"):
        FieldFinder(b"b", "model").feed(bad)
