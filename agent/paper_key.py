"""The keys document on paper (``vmkeep key export --paper``), and back (``key import``).

The compact JSON of the document is printed as numbered lines of 16 bytes in hex, each ending
in a check of 4 hex digits over its number and bytes, so a typing mistake is found on the line
where it was made; the document's own checksum then covers the whole.
"""

from __future__ import annotations

import hashlib
import json
import re

HEADER = "vmkeep keys of repository "
BYTES_PER_LINE = 16
_LINE = re.compile(r"^\s*(\d+)\s*:\s*([0-9a-fA-F ]+?)\s*-\s*([0-9a-fA-F]{4})\s*$")


class PaperKeyError(ValueError):
    """A paper key that cannot be read back; the message names the line."""


def to_paper(document: bytes, repo_id: str) -> str:
    compact = json.dumps(json.loads(document), separators=(",", ":")).encode()
    lines = [
        f"{HEADER}{repo_id}",
        "Type each numbered line; the 4 digits after '-' check that line. Import with 'vmkeep key import FILE'.",
        "",
    ]
    for number, start in enumerate(range(0, len(compact), BYTES_PER_LINE), 1):
        chunk = compact[start : start + BYTES_PER_LINE]
        groups = " ".join(chunk[i : i + 2].hex() for i in range(0, len(chunk), 2))
        lines.append(f"{number:3d}: {groups} - {_check(number, chunk)}")
    return "\n".join(lines) + "\n"


def is_paper(content: bytes) -> bool:
    return content.lstrip().startswith(HEADER.encode())


def from_paper(content: bytes) -> bytes:
    """The document's bytes from a paper key (blank lines and the header are ignored)."""
    data = bytearray()
    expected = 1
    for text in content.decode("utf-8", "replace").splitlines()[1:]:
        if not text.strip() or not text.strip()[0].isdigit():
            continue
        match = _LINE.match(text)
        if match is None:
            raise PaperKeyError(f"cannot read line {text.strip()!r}")
        number = int(match.group(1))
        if number != expected:
            raise PaperKeyError(f"line {expected} is missing (found line {number})")
        try:
            chunk = bytes.fromhex(match.group(2).replace(" ", ""))
        except ValueError:
            raise PaperKeyError(f"line {number}: an odd number of hex digits") from None
        if _check(number, chunk) != match.group(3).lower():
            raise PaperKeyError(f"line {number}: its check does not match (a typing mistake on this line?)")
        data += chunk
        expected += 1
    if not data:
        raise PaperKeyError("no numbered lines")
    return bytes(data)


def _check(number: int, chunk: bytes) -> str:
    return hashlib.sha256(f"{number}:".encode() + chunk).hexdigest()[:4]
