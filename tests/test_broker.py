"""`gpucost kafka start|stop|status` on a broker of its own (other ports, other data dir):
idempotent, waits until the broker answers, leaves nothing running after stop."""

from pathlib import Path

import pytest

from core import broker
from core.settings import Settings
from tests.support import free_port

pytestmark = pytest.mark.integration


def test_start_is_idempotent_and_stop_leaves_nothing_running(tmp_path: Path):
    port, cport = free_port(), free_port()
    s = Settings(data_dir=tmp_path, kafka_bootstrap=f"127.0.0.1:{port}", kafka_controller_port=cport)
    assert not broker.status(s).running
    first = broker.start(s)
    try:
        assert first.answering and first.pid is not None
        again = broker.start(s)
        assert again.pid == first.pid, "a second start must not start a second broker"
        assert (tmp_path / "kafka" / "data" / "meta.properties").exists()
    finally:
        assert broker.stop(s) is True
    st = broker.status(s)
    assert not st.running and not st.answering
    assert not Path(f"/proc/{first.pid}").exists()
    assert broker.stop(s) is False
    # Storage was formatted once: a restart reuses it.
    assert broker.start(s).answering
    assert broker.stop(s)
