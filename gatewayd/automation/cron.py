"""When a cron expression fires, as instants: croniter does the arithmetic on the wall
clock of a time zone, this module maps its wall times onto real instants.

Daylight saving time: a wall time that a change skips (02:30 when clocks jump from
02:00 to 03:00) fires once, at the first valid minute after the jump; a wall time that
a change repeats (01:30 when clocks go back from 02:00 to 01:00) fires once, at its
first occurrence. Expressions have five fields (minutes) or six (seconds first).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo

from croniter import croniter

from gatewayd.config.schedules import cron_problem

# A jump of the clocks never spans more than this (the largest ever is a day, when
# Samoa crossed the date line); beyond it the search for a valid minute gives up.
_MAX_GAP = timedelta(days=1, hours=1)
# Wall times whose instant is already past that a search steps over before giving up
# (a repeated hour holds at most 3600 of them for an every-second expression).
_MAX_STEPS = 10_000


class CronError(ValueError):
    """An expression croniter does not take, or a search that found no time."""


@dataclass(frozen=True)
class Cron:
    """A cron expression in a time zone."""

    expression: str
    tz: tzinfo

    def __post_init__(self) -> None:
        problem = cron_problem(self.expression)
        if problem is not None:
            raise CronError(problem)

    def _iter(self, start: datetime, *, backwards: bool = False) -> croniter[datetime]:
        return croniter(
            self.expression,
            start,
            ret_type=datetime,
            is_prev=backwards,
            second_at_beginning=len(self.expression.split()) == 6,
        )

    def next_after(self, after: datetime) -> datetime:
        """The first firing strictly after instant `after` (aware), in UTC."""
        wall = after.astimezone(self.tz).replace(tzinfo=None, fold=0)
        it = self._iter(wall)
        for _ in range(_MAX_STEPS):
            instant = self.instant(it.get_next(datetime))
            if instant > after:
                return instant
        raise CronError(f"'{self.expression}': no firing found after {after.isoformat()}")

    def latest_until(self, until: datetime) -> datetime | None:
        """The last firing at or before instant `until`, in UTC (None: not within the
        last few thousand wall times, which a real expression never gives)."""
        # croniter's previous time is strictly before its start: start a second later.
        wall = (until.astimezone(self.tz) + timedelta(seconds=1)).replace(tzinfo=None, fold=0)
        it = self._iter(wall, backwards=True)
        for _ in range(_MAX_STEPS):
            instant = self.instant(it.get_prev(datetime))
            if instant <= until:
                return instant
        return None

    def instant(self, wall: datetime) -> datetime:
        """The instant (UTC) wall time `wall` (naive, in this zone) fires at: its first
        occurrence, or the first valid minute after it when a jump skips it."""
        if _exists(wall, self.tz):
            return wall.replace(tzinfo=self.tz, fold=0).astimezone(UTC)
        probe = wall.replace(second=0, microsecond=0)
        limit = wall + _MAX_GAP
        while probe <= limit:
            probe += timedelta(minutes=1)
            if _exists(probe, self.tz):
                return probe.replace(tzinfo=self.tz, fold=0).astimezone(UTC)
        raise CronError(f"no valid time after {wall.isoformat()} in {self.tz}")


def _exists(wall: datetime, tz: tzinfo) -> bool:
    """Whether naive `wall` is a time the clocks of `tz` show (not skipped by a jump)."""
    aware = wall.replace(tzinfo=tz, fold=0)
    back = aware.astimezone(UTC).astimezone(tz).replace(tzinfo=None)
    return back == wall
