"""A short soak in ``make test``: the real server (as ``make serve`` starts it), 500 mixed
requests at concurrency 32, after a warm-up of 300 with the same mix.

Bounds: no 5xx, no connection error, every response what its request should get, no
traceback in the server log, and resident memory after the run within 10 % of what
it was after the warm-up, both read idle and trimmed (``settled_rss``). The warm-up is
that long because the first few hundred requests grow the process for good
(TensorFlow's per-shape kernels, the allocator's per-thread arenas, the threadpool
filling up to the concurrency); leaking memory per request is what the bound is for:
10 % is ~40 MiB, ~80 KiB per request, where one leaked decoded slice is 1 MiB. Five runs
read +0.4 % to +2.5 %. The 10,000-request run is
``python -m tests.load.soak --requests 10000 --concurrency 32``.
"""

from __future__ import annotations

import pytest

from tests.load.soak import run_soak

REQUESTS = 500
CONCURRENCY = 32
WARMUP = 300
MAX_RSS_GROWTH = 0.10


@pytest.mark.slow
def test_short_soak() -> None:
    result = run_soak(REQUESTS, CONCURRENCY, warmup=WARMUP)
    print(result.summary())
    assert result.requests == REQUESTS
    assert result.server_errors == 0, result.statuses
    assert result.connection_errors == {}
    assert result.unexpected == []
    assert set(result.statuses) <= {200, 400, 413, 415}
    assert result.statuses[200] >= REQUESTS * 3 // 4  # valid singles and batches
    assert result.server_log_problems == []
    assert result.rss_growth < MAX_RSS_GROWTH, result.summary()
