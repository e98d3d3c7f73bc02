"""A bounded asyncio load generator for a served model (tritonclient.grpc.aio, loopback).

``concurrency`` workers share one gRPC channel; each sends batch-1 requests back to back
(closed loop) until ``max_requests`` have been sent in total or ``max_seconds`` passed,
whichever comes first. The first ``warmup`` requests of the run are not timed. Only
loopback addresses are accepted: this is a benchmark of a local server, not a load test
of anything else.

Example:
    >>> import numpy as np
    >>> requests = [{"user_id": np.array([[3]]), "item_ids": np.arange(100)[None]}]
    >>> run_load("127.0.0.1:8001", "mf_rerank", requests, concurrency=4)  # doctest: +SKIP
    {'requests': ..., 'throughput_rps': ..., 'p50_ms': ..., 'p99_ms': ...}
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

_LOOPBACK_NAMES = ("localhost",)


def check_loopback(url: str) -> None:
    """Raises ValueError unless ``url`` (``host:port``) names a loopback address."""
    host = url.rsplit(":", 1)[0].strip("[]")
    if host in _LOOPBACK_NAMES:
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise ValueError(f"loadgen only targets loopback addresses. Received: url={url!r}")


async def _run(url: str, model: str, requests: Sequence[dict[str, np.ndarray]],
               concurrency: int, max_requests: int, max_seconds: float,
               warmup: int) -> dict[str, Any]:
    import tritonclient.grpc.aio as grpcclient

    client = grpcclient.InferenceServerClient(url)
    prepared = []
    for feed in requests:
        inputs = []
        for name, array in feed.items():
            tensor = grpcclient.InferInput(name, list(array.shape), "INT64")
            tensor.set_data_from_numpy(np.ascontiguousarray(array, np.int64))
            inputs.append(tensor)
        prepared.append(inputs)
    counter = itertools.count()
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + max_seconds
    timed_start: list[float] = []

    async def worker() -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            index = next(counter)
            if index >= max_requests + warmup:
                return
            if index == warmup:
                timed_start.append(time.perf_counter())
            start = time.perf_counter()
            try:
                await client.infer(model, prepared[index % len(prepared)])
            except Exception:  # noqa: BLE001 - counted, the run goes on
                errors += 1
                continue
            if index >= warmup:
                latencies.append(time.perf_counter() - start)

    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        await client.close()
    elapsed = time.perf_counter() - (timed_start[0] if timed_start else deadline)
    lat = 1000 * np.asarray(latencies) if latencies else np.asarray([np.nan])
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "errors": errors,
        "seconds": round(elapsed, 3),
        "throughput_rps": round(len(latencies) / elapsed, 1) if elapsed > 0 else None,
        "p50_ms": round(float(np.percentile(lat, 50)), 3),
        "p99_ms": round(float(np.percentile(lat, 99)), 3),
    }


def run_load(url: str, model: str, requests: Sequence[dict[str, np.ndarray]], *,
             concurrency: int, max_requests: int = 5000, max_seconds: float = 10.0,
             warmup: int = 50) -> dict[str, Any]:
    """Runs a bounded closed-loop load against ``model`` and returns throughput and latency.

    Args:
        url: ``host:port`` of the server's gRPC endpoint (loopback only).
        model: Model name.
        requests: Request feeds (input name -> INT64 array with a leading batch dim of 1),
            sent in round-robin order.
        concurrency: Number of requests in flight.
        max_requests: Timed requests to send at most.
        max_seconds: Wall-clock bound of the whole run (warm-up included).
        warmup: Untimed requests at the start.

    Returns:
        ``concurrency``, ``requests``, ``errors``, ``seconds``, ``throughput_rps``,
        ``p50_ms``, ``p99_ms``.
    """
    check_loopback(url)
    if concurrency < 1:
        raise ValueError(f"Invalid value received for argument `concurrency`. Expected a "
                         f"positive int. Received: concurrency={concurrency!r}")
    return asyncio.run(_run(url, model, requests, concurrency, max_requests, max_seconds,
                            warmup))
