"""Shape buckets: the few static sizes that compiled functions are built for.

Every compiled function has static shapes, so a request's real sizes are rounded up to a bucket:
context lengths (positions attended), prompt chunk lengths and decode batch sizes. Powers of two
keep the count of compiled variants small (log2) while wasting at most half of a step's work.
"""

from __future__ import annotations

import bisect


def power_buckets(smallest: int, largest: int) -> tuple[int, ...]:
    """Powers of two from ``smallest`` while below ``largest``, then ``largest`` itself."""
    if largest < 1:
        raise ValueError(f"largest bucket must be >= 1, got {largest}")
    out = []
    b = max(1, smallest)
    while b < largest:
        out.append(b)
        b *= 2
    out.append(largest)
    return tuple(out)


def round_up(n: int, buckets: tuple[int, ...]) -> int:
    """The smallest bucket >= n; ``ValueError`` if n exceeds the largest."""
    i = bisect.bisect_left(buckets, n)
    if i == len(buckets):
        raise ValueError(f"size {n} exceeds the largest bucket {buckets[-1]}")
    return buckets[i]
