"""rbd-diff style hints: accepted forms, merged extents, refused forms."""

from __future__ import annotations

import pytest

from vmkeep.hypervisors.base import Extent
from vmkeep.hypervisors.image.exceptions import HintsError
from vmkeep.hypervisors.image.hints import parse_hints


def test_extents_are_sorted_and_merged() -> None:
    doc = [
        {"offset": 100, "length": 50, "exists": "true"},
        {"offset": 0, "length": 10, "exists": "false"},
        {"offset": 150, "length": 10, "exists": True},
        {"offset": 120, "length": 5},
        {"offset": 500, "length": 0},
    ]
    assert parse_hints(doc, 1000, "t") == [Extent(0, 10), Extent(100, 60)]


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"offset": 0}, "array"),
        ([5], "not an object"),
        ([{"offset": 1.5, "length": 1}], "integer"),
        ([{"offset": True, "length": 1}], "integer"),
        ([{"offset": 0, "length": 1001}], "past the end"),
        ([{"offset": 0, "length": 1, "exists": "maybe"}], "exists"),
    ],
)
def test_malformed_hints(doc: object, message: str) -> None:
    with pytest.raises(HintsError, match=message):
        parse_hints(doc, 1000, "t")
