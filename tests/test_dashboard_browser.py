"""The floor dashboard in a real headless Chromium: 20 simulated stations on a real Mosquitto.

Every station appears within 5 s, a station whose connection dies turns red by its last will, a
clicked False alarm (and a Missed defect) arrives on ``feedback``, and the page holds 2 alerts/s per
station without its DOM or JS heap growing. The load test runs ``SEAMQC_DASHBOARD_SOAK_S`` seconds
(default 30; the issue's full run is ``SEAMQC_DASHBOARD_SOAK_S=300``, see the README).
``SEAMQC_SAVE_SCREENSHOT=1`` also writes the README's screenshot, docs/dashboard.png.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from tests.support.browser import headless_chrome, require_browser
from tests.support.stations import DashboardProcess, Fleet
from tests.support.wait import wait_until

ROOT = Path(__file__).resolve().parent.parent
SOAK_S = float(os.environ.get("SEAMQC_DASHBOARD_SOAK_S", "30"))
N_STATIONS = 20

pytestmark = [pytest.mark.browser, pytest.mark.slow]

require_browser()

from selenium.webdriver.common.by import By  # noqa: E402


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    d = headless_chrome(
        tmp_path_factory.mktemp("chromium-profile"),
        "1920,1080",  # a floor TV
        extra=(
            "--js-flags=--expose-gc",  # window.gc(): heap figures after a collection, not before
            "--enable-precise-memory-info",
        ),
    )
    yield d
    d.quit()


@pytest.fixture
def floor(mqtt_broker, mqtt_subscriber):
    """A broker, a feedback subscriber, the dashboard process; the fleet is the test's to start."""
    feedback = mqtt_subscriber(mqtt_broker, "seamqc/+/feedback")
    dash = DashboardProcess(mqtt_broker.host, mqtt_broker.port, "--by", "floor-tv").wait_subscribed()
    fleets: list[Fleet] = []
    yield mqtt_broker, feedback, dash, fleets
    for f in fleets:
        f.close()
    dash.stop()


def stations_shown(driver) -> list[str]:
    return driver.execute_script("return [...document.querySelectorAll('.card')].map(c => c.dataset.station)")


def card_status(driver, name: str) -> str | None:
    return driver.execute_script(
        "const c = document.querySelector(`.card[data-station='${arguments[0]}']`); return c && c.dataset.status",
        name,
    )


POLLS = "return Number(document.body.dataset.polls)"
PAGE_FIGURES = """
if (window.gc) window.gc();
return {nodes: document.getElementsByTagName('*').length,
        heap: performance.memory ? performance.memory.usedJSHeapSize : null,
        polls: Number(document.body.dataset.polls)};
"""


def test_twenty_stations_appear_offline_turns_red_feedback_arrives(driver, floor, tmp_path):
    broker, feedback, dash, fleets = floor
    driver.get(dash.url + "/")
    wait_until(lambda: int(driver.find_element(By.TAG_NAME, "body").get_attribute("data-polls")) >= 1, timeout=15)
    assert stations_shown(driver) == []

    t0 = time.monotonic()
    fleet = Fleet(broker.host, broker.port, N_STATIONS)
    fleets.append(fleet)
    fleet.wait_connected().start()
    names = sorted(fleet.stations)
    wait_until(lambda: stations_shown(driver) == names, timeout=5, what="all 20 stations on the page")
    appeared = time.monotonic() - t0
    assert appeared < 5.0
    # each card filled in: online, fps, health, a rate with its sparkline, the heatmap, the alert
    wait_until(
        lambda: driver.execute_script(
            "return [...document.querySelectorAll('.card')].every(c => c.dataset.status === 'online' "
            "&& c.querySelector('.fps').textContent === '29.5' && c.querySelectorAll('.alerts li').length === 1 "
            "&& c.querySelector('.heatmap').complete && c.querySelector('.heatmap').naturalWidth === 160 "
            "&& c.querySelector('.rates polyline').getAttribute('points'))"
        ),
        timeout=10,
        what="every card filled in",
    )
    assert driver.execute_script("return document.querySelector(\"[data-station='sim-03'] .health\").textContent") == (
        "blurred"
    )

    fleet.stations["sim-05"].kill()  # a crash: no DISCONNECT, the broker publishes the will
    wait_until(lambda: card_status(driver, "sim-05") == "offline", timeout=10, what="sim-05 offline")
    border = driver.execute_script(
        "return getComputedStyle(document.querySelector(\"[data-station='sim-05']\")).borderTopColor"
    )
    r, g, b = (int(x) for x in border[border.index("(") + 1 : border.index(")")].split(",")[:3])
    assert r > 180 and g < 100 and b < 100, border  # red
    assert "OFFLINE: sim-05" in driver.find_element(By.ID, "attention").text
    assert card_status(driver, "sim-04") == "online"

    event = "sim-07-evt-000001"
    driver.find_element(By.CSS_SELECTOR, f"li[data-event='{event}'] button.false").click()
    got = feedback.wait_for("seamqc/sim-07/feedback", timeout=10)
    assert got.qos == 1
    assert got.json() == {"event_id": event, "verdict": "false_alarm", "labels": ["error"], "by": "floor-tv"}
    wait_until(
        lambda: (
            "false alarm"  # read in one script: the poll may rebuild the list between two calls
            in driver.execute_script(f"return document.querySelector(\"li[data-event='{event}']\").textContent")
        ),
        timeout=5,
        what="the verdict shown in place of the buttons",
    )

    driver.find_element(By.CSS_SELECTOR, "[data-station='sim-02'] button.missed").click()
    driver.find_element(By.CSS_SELECTOR, "[data-station='sim-02'] button[data-label='break']").click()
    missed = feedback.wait_for("seamqc/sim-02/feedback", timeout=10).json()
    assert missed["missed"]["labels"] == ["break"] and missed["by"] == "floor-tv"
    assert set(missed) == {"missed", "by"} and set(missed["missed"]) == {"ts", "labels"}

    for name in ("sim-01", "sim-02", "sim-04", "sim-06"):  # a busier picture for the README
        fleet.stations[name].alert(("break", "length"))
        fleet.stations[name].alert(("error",))
    fleet.stations["sim-06"].publish("defect", "ON", qos=1, retain=True)
    wait_until(
        lambda: driver.execute_script(
            "return document.querySelectorAll(\"[data-station='sim-06'] .alerts li\").length === 3 "
            "&& !document.querySelector(\"[data-station='sim-06'] .defect\").hidden"
        ),
        timeout=5,
        what="the new alerts and the open defect shown",
    )
    shot = tmp_path / "dashboard.png"
    driver.execute_script("window.scrollTo(0, 0)")
    driver.save_screenshot(str(shot))
    assert shot.stat().st_size > 20_000
    if os.environ.get("SEAMQC_SAVE_SCREENSHOT") == "1":
        save_readme_screenshot(shot, ROOT / "docs" / "dashboard.png")


def save_readme_screenshot(src: Path, dst: Path) -> None:
    """The README's picture: the top of the page, scaled to 1280 px wide, under 150 KB."""
    import cv2

    from tests.support.images import imread

    img = imread(src)
    img = cv2.resize(img, (1280, round(img.shape[0] * 1280 / img.shape[1])), interpolation=cv2.INTER_AREA)
    dst.parent.mkdir(exist_ok=True)
    for colours in (64, 32, 16):  # posterise until it fits
        q = (img // (256 // colours)) * (256 // colours)
        ok, buf = cv2.imencode(".png", q, [cv2.IMWRITE_PNG_COMPRESSION, 9])
        if ok and len(buf) < 150_000:
            dst.write_bytes(buf.tobytes())
            return
    raise AssertionError("the screenshot does not fit 150 KB")


def test_page_holds_two_alerts_per_second_per_station_without_growing(driver, floor):
    import psutil

    broker, _, dash, fleets = floor
    fleet = Fleet(broker.host, broker.port, N_STATIONS)
    fleets.append(fleet)
    fleet.wait_connected().start()
    driver.get(dash.url + "/")
    wait_until(lambda: len(stations_shown(driver)) == N_STATIONS, timeout=10, what="20 stations")

    stop = threading.Event()
    published = {"alerts": 0}

    def load() -> None:  # pacing, not synchronisation: 2 alerts/s per station, stats 1/s, a heatmap every 5 s
        tick = 0
        next_t = time.monotonic()
        while not stop.is_set():
            for i, st in enumerate(fleet.stations.values()):
                a = st.alert(("error",) if (tick + i) % 3 else ("error", "length"))
                published["alerts"] += 1
                if tick % 2 == 0:
                    st.stats()
                if tick % 10 == i % 10:
                    st.heatmap(a["event_id"], fleet.jpegs[tick % len(fleet.jpegs)])
            tick += 1
            next_t += 0.5
            stop.wait(max(0.0, next_t - time.monotonic()))

    proc = psutil.Process(dash.proc.pid)
    loader = threading.Thread(target=load, daemon=True)
    loader.start()
    try:
        warm = min(10.0, SOAK_S / 3)
        wait_until(lambda: published["alerts"] >= warm * 2 * N_STATIONS, timeout=warm + 20, what="warm-up load")
        first = driver.execute_script(PAGE_FIGURES)
        rss0 = proc.memory_info().rss
        samples = [first]
        end = time.monotonic() + SOAK_S - warm
        while time.monotonic() < end:
            polls = samples[-1]["polls"]
            # the page keeps polling under load: wait for 5 more polls between samples
            wait_until(lambda p=polls: driver.execute_script(POLLS) >= p + 5, timeout=30, what="5 polls", every=0.2)  # type: ignore[misc]
            samples.append(driver.execute_script(PAGE_FIGURES))
        last = driver.execute_script(PAGE_FIGURES)
        rss1 = proc.memory_info().rss
    finally:
        stop.set()
        loader.join(10)
    sent = published["alerts"]
    heap = [s["heap"] for s in samples + [last]]
    print(  # shown with -s: the figures the README quotes
        f"\nsoak {SOAK_S:.0f} s: {sent} alerts, DOM nodes {first['nodes']}..{max(s['nodes'] for s in samples)}, "
        f"JS heap {heap[0]}..{max(h or 0 for h in heap)} B, dashboard RSS {rss0 >> 20}->{rss1 >> 20} MiB"
    )
    assert sent >= 2 * N_STATIONS * SOAK_S * 0.8, sent  # the load really was ~2 alerts/s per station
    shown = driver.execute_script("return document.querySelectorAll('.alerts li').length")
    assert shown <= N_STATIONS * 6  # PAGE_ALERTS per card, however many arrived
    nodes = [s["nodes"] for s in samples + [last]]
    assert max(nodes) <= first["nodes"] + 40, nodes  # the DOM does not grow with the alerts
    if first["heap"] is not None:
        grown = last["heap"] - first["heap"]
        assert grown < 8 * 2**20, [s["heap"] for s in samples + [last]]  # nor the JS heap
    assert rss1 - rss0 < 40 * 2**20, (rss0, rss1)  # nor the dashboard process
    newest = driver.execute_script(
        "return document.querySelector(\"[data-station='sim-01'] .alerts li\").dataset.event"
    )
    assert int(newest.rsplit("-", 1)[1]) >= fleet.stations["sim-01"].alerts - 10  # and it kept up
    assert dash.proc.poll() is None
