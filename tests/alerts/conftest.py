from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.alerts.receiver import Receiver


@pytest.fixture
def receiver() -> Iterator[Callable[..., Receiver]]:
    """``receiver(fail_first=0, fail_status=503)``: a started HTTP receiver, closed after."""
    made: list[Receiver] = []

    def make(fail_first: int = 0, fail_status: int = 503) -> Receiver:
        r = Receiver(fail_first, fail_status).start()
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()
