"""SIGKILL the stream worker mid-stream and restart it: the final aggregates equal the expected
sums exactly, with nothing lost and nothing counted twice. Faust-style delivery is at-least-once
(faust issue #502), so the second kill also rewinds the worker's committed offsets half way back:
every message after that point, already folded into a durable pane, is delivered again, and the
pane offsets must make each one count once."""

from __future__ import annotations

import pytest

from bench.fault_harness import run_worker_crash

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240), pytest.mark.one_database]  # the worker and the broker are under test, not the database


async def test_worker_sigkill_mid_stream_then_full_replay_counts_every_event_exactly_once(stack):
    t = await run_worker_crash(stack)
    print("\n" + t.line())
    assert t.notes["replayed msgs"] > 0  # the replay really re-delivered folded messages
    assert (t.lost, t.double_counted) == (0, 0), t.line() + "\n" + stack.log("worker")[-3000:]
    assert t.aggregated == t.sent and t.windows_wrong == 0, t.line()
