"""The labeling page on a collect folder (label --images) in a real headless Chromium: pre-labels shown,
Enter confirms and moves on, a correction is saved, the CSV on disk follows."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from convert.collect import CSV_NAME
from tests.support.browser import headless_chrome, require_browser

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.browser, pytest.mark.slow]

require_browser()

from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


def test_review_page_shows_prelabels_and_enter_confirms(mqtt_broker, collected_folder, tmp_path):
    folder = collected_folder(mqtt_broker, tmp_path / "collected")
    proc = subprocess.Popen(
        [sys.executable, "-m", "convert", "label", "--images", str(folder), "--port", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    driver = None
    try:
        url = None
        deadline = time.monotonic() + 60
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            if "http://" in line:
                url = "http://" + line.split("http://", 1)[1].split()[0]
        assert url, proc.stderr.read() if proc.poll() is not None else "no URL"
        driver = headless_chrome(tmp_path / "profile", "1400,900")
        driver.get(url)

        def settle() -> None:
            WebDriverWait(driver, 15).until(
                lambda d: (
                    d.find_element(By.TAG_NAME, "body").get_attribute("data-pending") == "0"
                    and d.find_element(By.ID, "frame-no").text.isdigit()
                )
            )

        def key(k: str) -> None:
            ActionChains(driver).send_keys(k).perform()
            settle()

        def text(i: str) -> str:
            return driver.find_element(By.ID, i).text

        def chips() -> dict[str, bool]:
            return {
                a: "on" in driver.find_element(By.CSS_SELECTOR, f'.chip[data-attr="{a}"]').get_attribute("class")
                for a in ("good", "error", "break", "length")
            }

        settle()
        # image 0 is st1-b00t-00000001-flagged: the model's error, not reviewed
        assert "st1-b00t-00000001-flagged.png" in text("badge-frame")
        assert text("badge-saved") == "pre-label · not reviewed" and "station=st1" in text("saved-as")
        assert chips() == {"good": False, "error": True, "break": False, "length": True}
        assert text("count-reviewed") == "0 / 6"
        key(Keys.ENTER)  # confirm and move on: image 1 (uncertain, good, 4 mm)
        assert text("frame-no") == "1" and text("count-reviewed") == "1 / 6"
        assert chips() == {"good": True, "error": False, "break": False, "length": False}
        key(Keys.ENTER)  # image 2: the false alarm the operator called a break
        assert chips() == {"good": False, "error": False, "break": True, "length": True}
        assert "verdict=false_alarm" in text("saved-as")
        key("b")
        key("g")  # correct: not a break after all, a good seam
        assert text("badge-saved") == "pre-label · corrected, not saved"
        key(Keys.ENTER)
        assert text("frame-no") == "3" and text("count-reviewed") == "3 / 6"
        key(Keys.ARROW_LEFT)
        assert text("badge-saved") == "reviewed ✓"
        df = pd.read_csv(folder / CSV_NAME, index_col=0).set_index("name")
        row = df.loc["st1-b00t-00000003-flagged.png"]
        assert [bool(row[a]) for a in ("good", "error", "break", "length", "reviewed")] == [
            True,
            False,
            False,
            True,
            True,
        ]
        assert int(df["reviewed"].sum()) == 3
        key("q")
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0 and "reviewed 3 of 6 image(s)" in out, err
    finally:
        if driver is not None:
            driver.quit()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
