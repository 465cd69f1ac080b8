"""Transient vs permanent storage errors, and retrying the transient ones.

Transient: connection refused or reset, timeouts, 5xx answers, throttling (503 SlowDown, 429): the same
request may well succeed later. Permanent: a missing object, access denied, a bad request: asking
again changes nothing. Transient failures are retried with exponential backoff and full jitter within
a time budget per object (`retry.*` in the job config); one that outlives its budget becomes a
`transient` error row, which a plain re-run retries (only permanent errors count as done).
"""

from __future__ import annotations

import random
import re
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

T = TypeVar("T")

TRANSIENT_KIND = "transient"   # the error kind of a row whose fetch outlived its retry budget

# words in the messages of pyarrow's C++ S3 client, botocore/s3fs and aiohttp for errors that pass
_TRANSIENT = re.compile(
    r"SLOW_?DOWN|slow down|throttl|TooManyRequests|\b429\b|\b50[0-4]\b|Service[ _]?Unavailable|INTERNAL_FAILURE|InternalError|"
    r"Internal Server Error|Bad Gateway|RequestTimeout|timed? ?out|timeout|NETWORK_CONNECTION|"
    r"couldn'?t connect|connection (?:refused|reset|aborted|closed)|Connection was closed|"
    r"curlCode: ?(?:6|7|18|28|52|55|56)\b|Broken pipe|EndpointConnectionError|ServerDisconnected|"
    r"ClientConnector|IncompleteRead|unexpected end|truncated|premature|Remote end closed|"
    r"Temporary failure|try again|UNKNOWN \(100\)",
    re.IGNORECASE)
_PERMANENT = re.compile(
    r"ACCESS_DENIED|AccessDenied|Forbidden|\b403\b|NoSuchKey|NoSuchBucket|\b404\b|not found|"
    r"InvalidAccessKeyId|SignatureDoesNotMatch|\b400\b|InvalidRequest|\b401\b", re.IGNORECASE)


def is_transient(error: BaseException) -> bool:
    """Whether asking again may succeed. Missing objects and denied access never are."""
    if isinstance(error, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    if isinstance(error, (ConnectionError, TimeoutError)):
        return True
    text = f"{type(error).__name__}: {error}"
    if _PERMANENT.search(text):
        return False
    if _TRANSIENT.search(text):
        return True
    cause = error.__cause__ or error.__context__
    return is_transient(cause) if cause is not None and cause is not error else False


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 30           # tries per object, the first included
    base_delay_s: float = 0.5    # backoff: uniform(0, min(max_delay_s, base * 2**retry))
    max_delay_s: float = 15.0
    budget_s: float = 120.0      # stop retrying an object once this much time has passed since its first try

    def delay(self, retry: int, rng: random.Random | None = None) -> float:
        cap = min(self.max_delay_s, self.base_delay_s * (2 ** retry))
        return (rng or random).uniform(0.0, cap)

    def next_wait(self, tries: int, start: float) -> float | None:
        """How long to wait before trying again after `tries` failed tries that began at `start`
        (time.monotonic()), or None once the attempts or the budget are spent."""
        wait = self.delay(tries - 1)
        if tries >= self.attempts or time.monotonic() - start + wait > self.budget_s:
            return None
        return wait


class RetriesExhausted(Exception):
    """A transient failure that outlived its retry budget; `.error` is the last one."""

    def __init__(self, error: BaseException, tries: int, elapsed_s: float):
        super().__init__(f"{type(error).__name__}: {error} (still failing after {tries} tries in "
                         f"{elapsed_s:.0f} s)")
        self.error, self.tries = error, tries


def call(fn: Callable[[], T], policy: RetryPolicy, retried: Callable[[BaseException], None] | None = None) -> T:
    """fn() with transient failures retried per `policy`; a permanent failure is raised at once, a
    transient one that outlives the budget as RetriesExhausted. `retried(error)` is told each retry."""
    start, tries = time.monotonic(), 0
    while True:
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - classified below
            if not is_transient(e):
                raise
            tries += 1
            wait = policy.next_wait(tries, start)
            if wait is None:
                raise RetriesExhausted(e, tries, time.monotonic() - start) from e
            if retried:
                retried(e)
            time.sleep(wait)
