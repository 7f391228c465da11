"""``make demo DASHBOARD=1`` (``convert demo --dashboard``) on the demo's own code path, a short video:
the dashboard runs on the demo's private broker while the demo holds, and both stop after."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest
import yaml

from convert.harness import free_port, port_open
from tests.support.mqtt import MOSQUITTO, SKIP_REASON

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.skipif(MOSQUITTO is None, reason=SKIP_REASON)
def test_demo_dashboard_serves_metrics_until_released(tmp_path, tiny_bundle):
    from convert.demo import demo

    src = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    src["mqtt"]["host"], src["mqtt"]["port"] = "127.0.0.1", free_port()  # nothing there: a private broker
    cfg = tmp_path / "demo.yaml"
    cfg.write_text(yaml.safe_dump(src))
    seen: dict = {}

    def hold(url: str) -> None:  # instead of waiting for Ctrl-C: what a user sees while it holds
        with urllib.request.urlopen(url + "metrics", timeout=10) as r:
            seen.update(url=url, status=r.status, metrics=r.read().decode())
        with urllib.request.urlopen(url, timeout=10) as r:
            seen["page"] = r.read().decode()

    res = demo(cfg, tmp_path / "out", frames=30, seed=1, bundle=str(tiny_bundle), quiet=True, dashboard=True, hold=hold)
    assert seen["status"] == 200 and "seamqc_dashboard_junk_messages" in seen["metrics"], seen
    assert "<html" in seen["page"].lower()
    assert res["dashboard"] == seen["url"] and seen["url"].startswith("http://127.0.0.1:")
    assert res["broker"]["private"] and res["frames"] == 30
    # after hold returns (Ctrl-C), the dashboard and the private broker are stopped
    dash_port = int(seen["url"].rstrip("/").rsplit(":", 1)[1])
    assert not port_open("127.0.0.1", dash_port) and not port_open("127.0.0.1", res["broker"]["port"])
