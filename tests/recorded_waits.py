"""A stand-in for the router's waits between retries: records each wait instead of sleeping, so a test asserts the
waits the router chose, on any machine, in no time."""

from __future__ import annotations

from router.router import Waits


class RecordedWaits(Waits):
    def __init__(self) -> None:
        self.waits: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)

    async def asleep(self, seconds: float) -> None:
        self.waits.append(seconds)
