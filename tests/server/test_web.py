"""The web page of `retrieve serve`, driven in headless Chromium: upload a photo, read the answer,
enrol a photo under a typed label. Saves a screenshot into $RETRIEVE_ARTIFACTS (default
artifacts/ at the repository root)."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from ..helpers import COLORS, write_image
from .helpers import running

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = Path(
    os.environ.get("RETRIEVE_ARTIFACTS", Path(__file__).resolve().parents[2] / "artifacts")
)
# Chromium as root, offline: no sandbox, and none of its background connections.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1100,900",
]


@pytest.fixture
def browser(tmp_path: Path):
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
    if missing:
        pytest.skip(f"{' and '.join(missing)} absent: apt-get install chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in [*FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_the_page_answers_a_photo_and_enrols_one(browser, index: Path, tmp_path: Path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    red = write_image(tmp_path / "q" / "red photo.png", COLORS["red"], seed=999, size=240)
    purple = write_image(tmp_path / "q" / "purple photo.png", (150, 30, 200), seed=998)
    wait = WebDriverWait(browser, 30)

    def answer_for(photo: Path) -> str:
        browser.find_element(By.ID, "file").send_keys(str(photo))
        label = browser.find_element(By.ID, "answer-label")
        wait.until(lambda _: label.text not in ("", "…"))
        return label.text

    with running(index) as url:
        browser.get(url)
        wait.until(lambda d: "photos in the index" in d.find_element(By.ID, "status").text)
        assert answer_for(red) == "red"
        assert "confidence" in browser.find_element(By.ID, "answer-confidence").text
        thumbs = browser.find_elements(By.CSS_SELECTOR, "#neighbors img")
        assert len(thumbs) == 5
        wait.until(
            lambda d: all(
                d.execute_script("return arguments[0].naturalWidth", t) > 0 for t in thumbs
            )
        )
        captions = [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".neighbor-caption")]
        with red.open("rb") as f:
            api = httpx.post(f"{url}/query", files={"file": (red.name, f)}).json()
        assert captions == [f"{n['label']} · {n['score']:.3f}" for n in api["neighbors"]]
        assert [c.split(" · ")[0] for c in captions[:4]] == ["red"] * 4
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        assert browser.save_screenshot(str(ARTIFACTS / "web-query.png"))

        assert answer_for(purple) == "unknown"  # no purple in the index: unknown by default
        said = browser.find_element(By.ID, "answer-confidence").text
        assert said.startswith("(like no label of this index; nearest: ")
        assert browser.find_element(By.ID, "enroll-title").text.startswith("New here?")
        assert browser.save_screenshot(str(ARTIFACTS / "web-unknown.png"))
        browser.find_element(By.ID, "enroll-label").send_keys("purple")
        browser.find_element(By.ID, "enroll-button").click()
        status = browser.find_element(By.ID, "enroll-status")
        wait.until(lambda _: status.text not in ("", "enrolling…"))
        assert status.text == "enrolled as “purple”; it now has 1 photos"
        assert httpx.get(f"{url}/labels").json()["purple"] == 1


def test_the_page_asks_for_the_token_once(browser, index: Path, tmp_path: Path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 30)
    shots = [write_image(tmp_path / f"p{i}.png", (150, 30, 200), seed=990 + i) for i in range(2)]

    def enrol(photo: Path, *, token: str | None) -> str:
        browser.find_element(By.ID, "file").send_keys(str(photo))
        label = browser.find_element(By.ID, "answer-label")
        wait.until(lambda _: label.text not in ("", "…"))
        field = browser.find_element(By.ID, "enroll-label")
        field.clear()
        field.send_keys("purple")
        browser.find_element(By.ID, "enroll-button").click()
        if token is not None:
            prompt = wait.until(expected_conditions.alert_is_present())
            assert "access token" in prompt.text
            prompt.send_keys(token)
            prompt.accept()
        status = browser.find_element(By.ID, "enroll-status")
        wait.until(lambda _: status.text not in ("", "enrolling…"))
        return status.text

    with running(index, token="s3cret-token") as url:
        browser.get(url)
        assert enrol(shots[0], token="s3cret-token") == "enrolled as “purple”; it now has 1 photos"
        assert enrol(shots[1], token=None) == "enrolled as “purple”; it now has 2 photos"
        assert httpx.get(f"{url}/labels").json()["purple"] == 2
