"""The labeling page driven in a real headless Chromium: keys pressed, files checked on disk."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.support.browser import headless_chrome, require_browser
from tests.support.frames import make_video

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.browser, pytest.mark.slow]

require_browser()

from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

# Reads the shown <img> back through a canvas and decodes tests.support.frames.draw's 8 bit columns.
DECODE_SHOWN_FRAME = """
const img = document.getElementById('frame');
if (!img.complete || !img.naturalWidth) return -1;
const c = document.createElement('canvas');
c.width = img.naturalWidth; c.height = img.naturalHeight;
const g = c.getContext('2d'); g.drawImage(img, 0, 0);
const col = Math.floor(c.width / 8); let n = 0;
for (let b = 0; b < 8; b++) {
  const d = g.getImageData(b * col + 4, 10, col - 8, c.height - 20).data; let s = 0;
  for (let i = 0; i < d.length; i += 4) s += d[i];
  if (s / (d.length / 4) > 128) n |= 1 << b;
}
return n;
"""


class Server:
    """``python -m convert label`` in a subprocess on a free port."""

    def __init__(self, video: Path, out: Path, *extra: str):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "convert", "label", "--video", str(video), "--out", str(out), "--port", "0", *extra],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None and self.proc.stderr is not None
        url = None
        self.head = []
        deadline = time.monotonic() + 60
        while url is None and time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.head.append(line)
            if "http://" in line:
                url = "http://" + line.split("http://", 1)[1].split()[0]
        if url is None:
            self.stop()
            raise AssertionError(f"no URL printed: {self.head} {self.proc.stderr.read()}")
        self.url: str = url

    def wait(self, timeout: float = 30) -> tuple[int, str]:
        out, _ = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, "".join(self.head) + out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    d = headless_chrome(tmp_path_factory.mktemp("chromium-profile"), "1400,900")
    yield d
    d.quit()


class Page:
    def __init__(self, driver, url: str):
        self.d = driver
        self.d.get(url)
        self.settle()

    def settle(self) -> None:
        """Wait until every key sent has been answered and rendered."""
        WebDriverWait(self.d, 15).until(
            lambda d: (
                d.find_element(By.TAG_NAME, "body").get_attribute("data-pending") == "0"
                and d.find_element(By.ID, "frame-no").text.isdigit()
            )
        )

    def keys(self, *keys: str, shift: bool = False) -> None:
        for k in keys:
            chain = ActionChains(self.d)
            if shift:
                chain = chain.key_down(Keys.SHIFT).send_keys(k).key_up(Keys.SHIFT)
            else:
                chain = chain.send_keys(k)
            chain.perform()
            self.settle()

    def text(self, element_id: str) -> str:
        return self.d.find_element(By.ID, element_id).text

    @property
    def frame(self) -> int:
        return int(self.text("frame-no"))

    def chip_on(self, attr: str) -> bool:
        return "on" in self.d.find_element(By.CSS_SELECTOR, f'.chip[data-attr="{attr}"]').get_attribute("class")

    def visible(self, element_id: str) -> bool:
        return self.d.find_element(By.ID, element_id).is_displayed()

    def shown_frame(self) -> int:
        WebDriverWait(self.d, 15).until(lambda d: d.execute_script(DECODE_SHOWN_FRAME) == self.frame)
        return self.d.execute_script(DECODE_SHOWN_FRAME)


def test_label_page_keys_files_undo_resume(driver, tmp_path):
    video = make_video(tmp_path / "seam7.avi", 7)
    out = tmp_path / "labels"
    srv = Server(video, out)
    try:
        page = Page(driver, srv.url)
        assert page.frame == 0 and page.text("frame-last") == "6"
        assert page.shown_frame() == 0
        assert not any(page.chip_on(a) for a in ("good", "error", "break", "length"))
        assert not page.visible("warning")
        help_text = page.text("help")
        assert "save" in help_text and "undo" in help_text

        page.keys("g", "s")  # seed keys: good, save
        assert page.chip_on("good") and page.text("count-saved") == "1" and page.text("count-good") == "1"
        assert (out / "seam7_0.png").is_file()
        assert page.visible("badge-saved")

        page.keys("n")  # next frame: the labels are carried
        assert page.frame == 1 and page.chip_on("good") and not page.visible("badge-saved")
        assert page.shown_frame() == 1
        page.keys("e")  # good + error: the warning banner
        assert page.visible("warning") and "good together with error" in page.text("warning")
        page.keys("s")
        assert page.text("count-saved") == "2" and page.text("count-contradictory") == "1"
        page.keys("g")
        assert not page.visible("warning") and page.chip_on("error")

        page.keys(Keys.ARROW_RIGHT, shift=True)  # +10 clamps at the last of 7 frames
        assert page.frame == 6 and page.shown_frame() == 6
        page.keys("n")
        assert page.frame == 6 and "last frame" in page.text("message")
        page.keys(Keys.ARROW_LEFT)
        assert page.frame == 5
        page.keys(Keys.PAGE_UP)
        assert page.frame == 0
        page.keys(Keys.PAGE_DOWN)
        assert page.frame == 6
        page.keys(Keys.HOME)
        assert page.frame == 0

        page.keys("j")  # jump box
        box = driver.find_element(By.ID, "jump")
        assert driver.switch_to.active_element == box
        box.send_keys("3", Keys.ENTER)
        page.settle()
        assert page.frame == 3 and page.shown_frame() == 3
        assert page.text("count-saved") == "2"  # Enter in the box jumps, it does not save

        chip = driver.find_element(By.CSS_SELECTOR, '.chip[data-attr="break"]')
        chip.click()  # chips are buttons too
        page.settle()
        assert page.chip_on("break")
        chip.click()
        page.settle()
        assert not page.chip_on("break")

        page.keys("l", Keys.ENTER)  # save + next
        assert page.frame == 4 and (out / "seam7_3.png").is_file()
        assert page.text("count-saved") == "3" and page.text("count-length") == "1"
        df = pd.read_csv(out / "seam7_data.csv", index_col=0)
        assert df["name"].tolist() == ["seam7_0.png", "seam7_1.png", "seam7_3.png"]

        page.keys("u")  # undo the last save: its PNG and row are gone, back at its frame
        assert page.frame == 3 and not (out / "seam7_3.png").exists()
        assert page.text("count-saved") == "2" and "deleted seam7_3.png" in page.text("message")

        driver.save_screenshot(str(tmp_path / "label.png"))
        assert (tmp_path / "label.png").stat().st_size > 10_000

        page.keys("q")
        WebDriverWait(driver, 10).until(lambda d: d.find_element(By.ID, "closed").is_displayed())
        rc, log = srv.wait()
        assert rc == 0 and "saved 2 frame(s)" in log
    finally:
        srv.stop()

    df = pd.read_csv(out / "seam7_data.csv", index_col=0)
    assert list(df.index) == [0, 1]
    assert df["name"].tolist() == ["seam7_0.png", "seam7_1.png"]
    assert df[["good", "error", "break", "length"]].values.tolist() == [
        [True, False, False, False],
        [True, True, False, False],
    ]
    assert sorted(p.name for p in out.iterdir()) == ["seam7_0.png", "seam7_1.png", "seam7_data.csv"]

    srv = Server(video, out)  # resume: after the last saved frame, with its labels
    try:
        assert "starting at frame 2" in "".join(srv.head)
        page = Page(driver, srv.url)
        assert page.frame == 2 and page.shown_frame() == 2
        assert page.chip_on("good") and page.chip_on("error") and page.visible("warning")
        assert page.text("count-saved") == "2"
        page.keys("q")
        assert srv.wait()[0] == 0
    finally:
        srv.stop()


# Where the ROI box and the shown frame's content land on screen (CSS px), and the frame's size.
ROI_ON_SCREEN = """
const img = document.getElementById('frame');
const svg = document.getElementById('roi');
if (!img.complete || !img.naturalWidth || svg.hasAttribute('hidden')) return null;
const r = img.getBoundingClientRect();
const s = Math.min(r.width / img.naturalWidth, r.height / img.naturalHeight);
const ox = r.left + (r.width - img.naturalWidth * s) / 2, oy = r.top + (r.height - img.naturalHeight * s) / 2;
const b = document.getElementById('roi-box').getBoundingClientRect();
return {natural: [img.naturalWidth, img.naturalHeight],
        box: [(b.left - ox) / s, (b.top - oy) / s, b.width / s, b.height / s],
        badge: document.getElementById('badge-roi').textContent};
"""


def test_label_page_draws_the_roi_and_saves_its_crop(driver, tmp_path):
    import cv2
    import numpy as np

    from edge.preprocess import crop_roi
    from tests.support.frames import draw
    from tests.support.images import imread

    video = make_video(tmp_path / "seam5.avi", 5)  # 160x120
    roi = (24, 10, 100, 90)
    out = tmp_path / "labels"
    srv = Server(video, out, "--roi", ",".join(map(str, roi)))
    try:
        assert "saving 100x90 PNGs: the daemon's crop, ROI [24, 10, 100, 90] from --roi" in "".join(srv.head)
        page = Page(driver, srv.url)
        assert page.shown_frame() == 0 and page.visible("roi") and page.visible("badge-roi")
        WebDriverWait(driver, 15).until(lambda d: d.execute_script(ROI_ON_SCREEN) is not None)
        shown = driver.execute_script(ROI_ON_SCREEN)
        assert shown["natural"] == [160, 120]  # the page shows the whole frame ...
        # ... with the box on the ROI's pixels (stroke: within a CSS px or two at this zoom)
        assert np.allclose(shown["box"], roi, atol=1.0), shown
        assert "100×90" in shown["badge"]
        page.keys("n", "g", "s")
        saved = imread(out / "seam5_1.png", cv2.IMREAD_UNCHANGED)
        assert saved.shape == (90, 100, 3)  # ... and saves exactly the crop
        frame = cv2.VideoCapture(str(video))
        frame.read()
        ok, second = frame.read()
        frame.release()
        assert ok and np.array_equal(saved, crop_roi(second, roi))
        assert np.abs(second.astype(int) - draw(1).astype(int)).mean() < 8  # the frame the page showed
        page.keys("q")
        assert srv.wait()[0] == 0
    finally:
        srv.stop()

    srv = Server(video, tmp_path / "whole")  # no ROI: no box, whole frames saved
    try:
        page = Page(driver, srv.url)
        assert not page.visible("roi") and not page.visible("badge-roi")
        page.keys("q")
        assert srv.wait()[0] == 0
    finally:
        srv.stop()
