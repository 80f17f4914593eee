"""Checked access to parsed JSON documents: what is read from disk is validated, not trusted.

Each helper raises ``TypeError`` or ``KeyError`` with a message that names the field; the
record parsers turn those into ``CorruptRepository`` naming the file.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, TypeVar

from .exceptions import CorruptRepository

T = TypeVar("T")


def json_object(raw: bytes | str) -> dict[str, Any]:
    """A JSON document that must be an object (ValueError/TypeError otherwise)."""
    doc = json.loads(raw)
    if not isinstance(doc, dict):
        raise TypeError("not a JSON object")
    return doc


def json_document(raw: bytes | str, where: str) -> dict[str, Any]:
    """``json_object``, with a failure turned into CorruptRepository naming ``where``."""
    try:
        return json_object(raw)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise CorruptRepository(f"{where}: not JSON ({exc})") from None
    except TypeError as exc:
        raise CorruptRepository(f"{where}: {exc}") from None


def versioned(raw: bytes | str, version: int, what: str) -> dict[str, Any]:
    """A JSON object whose ``version`` field must be ``version``."""
    doc = json_object(raw)
    if doc.get("version") != version:
        raise ValueError(f"unknown {what} version {doc.get('version')!r}")
    return doc


def typed(doc: dict[str, Any], key: str, kind: type[T]) -> T:
    """``doc[key]``, which must be of ``kind`` (a bool is not an int here)."""
    if key not in doc:
        raise KeyError(f"{key} is missing")
    value = doc[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise TypeError(f"{key} is {type(value).__name__}, not {kind.__name__}")
    return value


def optional(doc: dict[str, Any], key: str, kind: type[T], default: T) -> T:
    """``doc[key]`` if present and not null, checked as by ``typed``; else ``default``."""
    if doc.get(key) is None:
        return default
    return typed(doc, key, kind)


def obj(doc: dict[str, Any], key: str) -> dict[str, Any]:
    value = typed(doc, key, dict)
    return value


def number(doc: dict[str, Any], key: str) -> float:
    if key not in doc:
        raise KeyError(f"{key} is missing")
    value = doc[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{key} is {type(value).__name__}, not a number")
    return float(value)


def hex_id(doc: dict[str, Any], key: str, size: int = 32) -> str:
    value = typed(doc, key, str)
    if len(value) != 2 * size or value.strip("0123456789abcdef"):
        raise TypeError(f"{key} is not {size} bytes of lower-case hex")
    return value


def base64_field(doc: dict[str, Any], key: str, size: int | None) -> bytes:
    """``doc[key]`` decoded from base64, of ``size`` bytes unless ``size`` is None."""
    try:
        data = base64.b64decode(typed(doc, key, str).encode("ascii"), validate=True)
    except (binascii.Error, UnicodeError):
        raise ValueError(f"{key} is not base64") from None
    if size is not None and len(data) != size:
        raise ValueError(f"{key} is {len(data)} bytes, not {size}")
    return data
