"""Cron schedules, parsed by croniter.

Five fields as in crontab(5) (minute hour day month weekday), or six with a leading seconds
field (``*/10 * * * * *``, as Quartz and Spring write it) for tests and demos. Times are the
agent's local time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from croniter import croniter


@dataclass(frozen=True)
class Schedule:
    expression: str

    @property
    def has_seconds(self) -> bool:
        return len(self.expression.split()) == 6

    @staticmethod
    def problem(expression: str) -> str | None:
        """Why ``expression`` is not a usable schedule, or None."""
        fields = len(expression.split())
        if fields not in (5, 6):
            return (
                f"a cron schedule has 5 fields (minute hour day month weekday), or 6 with seconds first; got {fields}"
            )
        if not croniter.is_valid(expression, second_at_beginning=True):
            return f"not a valid cron expression: {expression!r}"
        return None

    def next_after(self, moment: datetime) -> datetime:
        """The first time strictly after ``moment`` (an aware datetime) this schedule fires."""
        it = croniter(self.expression, moment, second_at_beginning=True)
        result: datetime = it.get_next(datetime)
        return result

    def previous_before(self, moment: datetime) -> datetime:
        """The last time at or before ``moment`` this schedule fired."""
        it = croniter(self.expression, moment, second_at_beginning=True)
        result: datetime = it.get_prev(datetime)
        return result
