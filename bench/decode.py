"""The hot path's decoder, side by side, on a batch of 8 usage events: the contract's pydantic
`validate_json` (`decode_usage`), the worker's msgspec fast path (`decode_usage_rows`: C-level
constraints, the clock and memory checks in one loop, the name pattern as a byte check; any
message it does not accept whole goes to `decode_usage`), the first msgspec attempt (the name
pattern as a Python regex per field and a `__post_init__` per event), and a plain json.loads with
no checks as the floor. Prints microseconds per event and checks the rejections: pydantic and the
first attempt must reject the same bad events, and the fast path must hand every one of them to
`decode_usage` (so the worker's rejections are the contract's own).

    python -m bench.decode
"""


import json
import math
import statistics
import time
import timeit
from typing import Annotated

from rich.console import Console
from rich.table import Table

from contracts.events import decode_usage, decode_usage_rows, max_future_skew_s

console = Console()


def good_batch(n: int = 8) -> bytes:
    now = time.time()
    return json.dumps([{"schema_version": 1, "ts": now - 100, "tenant": "acme", "service": "chat", "cloud": "aws",
                        "region": "us-east-1", "instance_type": "p5.48xlarge", "gpu_model": "H100-80GB",
                        "host": "host-1", "gpu_index": g, "interval_s": 10.0, "util": 0.5, "mem_used_gb": 40.0,
                        "mem_total_gb": 80.0, "power_w": 400.0, "tokens": 1000} for g in range(n)]).encode()


def bad_events() -> list[bytes]:
    base = json.loads(good_batch(1))[0]
    cases = [("util", 1.5), ("util", -0.1), ("interval_s", 0), ("ts", time.time() + 3600), ("tenant", ""),
             ("tenant", "a\x00b"), ("gpu_index", -1), ("gpu_index", "3"), ("mem_used_gb", 100.0),
             ("power_w", -1.0), ("tokens", -5), ("util", "0.5"), ("ts", 1e999), ("service", None)]
    out = []
    for field, value in cases:
        ev = dict(base)
        ev[field] = value
        out.append(json.dumps(ev).replace("Infinity", "1e999").encode())
    return out


def msgspec_decoder():
    """The first msgspec attempt (kept for the comparison). Its `$` also matches before a final
    newline (Python's re), so it accepted a name ending in an escaped newline the contract rejects."""
    import msgspec
    from msgspec import Meta, Struct

    Name = Annotated[str, Meta(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")]

    class Usage(Struct, kw_only=True):
        schema_version: int = 1
        ts: Annotated[float, Meta(gt=0)]
        tenant: Name
        service: Name
        cloud: Name
        region: Name
        instance_type: Name
        gpu_model: Name
        host: Name
        gpu_index: Annotated[int, Meta(ge=0, le=1024)]
        interval_s: Annotated[float, Meta(gt=0, le=3600)]
        util: Annotated[float, Meta(ge=0, le=1)]
        mem_used_gb: Annotated[float, Meta(ge=0)]
        mem_total_gb: Annotated[float, Meta(gt=0)]
        power_w: Annotated[float, Meta(ge=0)]
        tokens: Annotated[int, Meta(ge=0)] | None = None
        requests: Annotated[int, Meta(ge=0)] | None = None
        model_version: Name | None = None

        def __post_init__(self):
            # what Meta cannot say: finiteness, the clock, and used <= total
            if not all(map(math.isfinite, (self.ts, self.mem_used_gb, self.mem_total_gb, self.power_w))):
                raise ValueError("non-finite number")
            if self.ts > time.time() + max_future_skew_s():
                raise ValueError("ts in the future")
            if self.mem_used_gb > self.mem_total_gb * 1.01:
                raise ValueError("mem_used_gb exceeds mem_total_gb")

    many = msgspec.json.Decoder(list[Usage])
    one = msgspec.json.Decoder(Usage)

    def rejects(raw: bytes) -> bool:
        try:
            one.decode(raw)
            return False
        except (msgspec.ValidationError, msgspec.DecodeError):
            return True

    return many.decode, rejects


def per_event_us(fn, raw: bytes, events: int, rounds: int = 7, number: int = 3000) -> tuple[float, float]:
    times = [timeit.timeit(lambda: fn(raw), number=number) / number / events * 1e6 for _ in range(rounds)]
    return statistics.median(times), max(times) - min(times)


def fast_path(raw: bytes):
    """What the worker does per message: the fast path, else the contract's decoder."""
    rows = decode_usage_rows(raw, time.time() + max_future_skew_s())
    return rows if rows is not None else decode_usage(raw)


def main() -> None:
    raw = good_batch(8)
    assert decode_usage_rows(raw, time.time() + max_future_skew_s()) is not None
    decode, msgspec_rejects = msgspec_decoder()
    variants = {"json.loads (no checks)": json.loads, "pydantic validate_json (the contract)": decode_usage,
                "msgspec, regex names + __post_init__ (first attempt)": decode,
                "msgspec fast path, else the contract (in use)": fast_path}
    t = Table(title="decoding a batch of 8 usage events: µs per event (median of 7 rounds, spread)")
    t.add_column("decoder")
    t.add_column("µs/event")
    t.add_column("spread")
    t.add_column("speed vs pydantic")
    results = {name: per_event_us(fn, raw, 8) for name, fn in variants.items()}
    base = results["pydantic validate_json (the contract)"][0]
    for name, (median, spread) in results.items():
        t.add_row(name, f"{median:.2f}", f"{spread:.2f}", f"{base / median:.2f}x")
    console.print(t)
    bad = bad_events()
    pydantic_rejects = [bool(decode_usage(b)[1]) for b in bad]
    same = [msgspec_rejects(b) for b in bad]
    handed_over = [decode_usage_rows(b, time.time() + max_future_skew_s()) is None for b in bad]
    console.print(f"bad events rejected: pydantic {sum(pydantic_rejects)}/{len(bad)}, first msgspec attempt "
                  f"{sum(same)}/{len(bad)} (same decisions: {pydantic_rejects == same}); fast path handed "
                  f"{sum(handed_over)}/{len(bad)} to the contract")


if __name__ == "__main__":
    main()
