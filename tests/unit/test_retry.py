"""Transient vs permanent storage errors, and the retry loop's budget."""

from __future__ import annotations

import time

import pytest

from operators.retry import RetriesExhausted, RetryPolicy, call, is_transient


@pytest.mark.parametrize("error", [
    ConnectionRefusedError(111, "Connection refused"),
    TimeoutError("read timed out"),
    OSError("When reading information for key 'a/b.flac' in bucket 'x': AWS Error NETWORK_CONNECTION during "
            "HeadObject operation: curlCode: 7, Couldn't connect to server"),
    OSError("AWS Error SLOW_DOWN during GetObject operation: Please reduce your request rate."),
    # pyarrow's words for a 503 whose body it did not read (seen in CI through the fault proxy)
    OSError("AWS Error SERVICE_UNAVAILABLE during GetObject operation: "),
    OSError("AWS Error INTERNAL_FAILURE during GetObject operation: "),
    OSError("AWS Error UNKNOWN (HTTP status 503) during GetObject operation: Service Unavailable"),
    OSError("AWS Error UNKNOWN (HTTP status 500) during GetObject operation"),
    OSError("curlCode: 18, Transferred a partial file"),
    ConnectionResetError(104, "Connection reset by peer"),
])
def test_transient(error):
    assert is_transient(error)


@pytest.mark.parametrize("error", [
    FileNotFoundError("s3://b/missing.flac"),
    PermissionError("Access Denied"),
    OSError("AWS Error ACCESS_DENIED during GetObject operation: Access Denied"),
    OSError("AWS Error NO_SUCH_KEY ... NoSuchKey"),
    OSError("AWS Error UNKNOWN (HTTP status 403) during HeadObject operation: No response body."),
    OSError("AWS Error UNKNOWN (HTTP status 404) during HeadObject operation"),
    ValueError("not audio"),
])
def test_permanent(error):
    assert not is_transient(error)


def test_a_transient_error_behind_a_generic_one_counts():
    try:
        try:
            raise ConnectionRefusedError(111, "refused")
        except ConnectionRefusedError as inner:
            raise RuntimeError("fetch failed") from inner
    except RuntimeError as e:
        assert is_transient(e)


def test_retries_until_success_and_reports_each_retry():
    seen, calls = [], iter([ConnectionError("refused"), TimeoutError("slow"), "data"])

    def fn():
        v = next(calls)
        if isinstance(v, Exception):
            raise v
        return v

    assert call(fn, RetryPolicy(base_delay_s=0.01), seen.append) == "data"
    assert [type(e) for e in seen] == [ConnectionError, TimeoutError]


def test_permanent_is_raised_at_once():
    n = []

    def fn():
        n.append(1)
        raise FileNotFoundError("gone")

    with pytest.raises(FileNotFoundError):
        call(fn, RetryPolicy(base_delay_s=0.01))
    assert len(n) == 1


def test_budget_ends_retrying():
    t = time.monotonic()

    def fn():
        raise ConnectionError("refused")

    with pytest.raises(RetriesExhausted, match="still failing after") as info:
        call(fn, RetryPolicy(attempts=100, base_delay_s=0.05, max_delay_s=0.05, budget_s=0.3))
    assert time.monotonic() - t < 1.0 and isinstance(info.value.error, ConnectionError)
    with pytest.raises(RetriesExhausted) as info:
        call(fn, RetryPolicy(attempts=3, base_delay_s=0.001, budget_s=10))
    assert info.value.tries == 3
