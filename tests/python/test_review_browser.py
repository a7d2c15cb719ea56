"""The review app in a real browser: Debian's headless Chromium driven by Selenium.

Opens the worklist, reviews three cases with the keyboard only, reloads, and finds the verdicts
in gold.prediction_feedback and in the worklist; toggles the heatmap overlay; writes screenshots
of the worklist and the case view at 1280x800 and 1920x1080 (``CXRLAKE_REVIEW_SCREENSHOTS``,
default ``target/review-screenshots``) and checks that nothing overflows the window.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from review_support import Running, build_lakehouse

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
SIZES = [(1280, 800), (1920, 1080)]
COMMENT = '<b id="injected">bold</b><script>window.pwned = 1</script> & "quotes"'


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("selenium missing: pip install -r requirements-review-test.txt (make setup)")

    for path in (CHROMIUM, CHROMEDRIVER):
        assert os.path.exists(path), f"{path} missing: apt-get install chromium chromium-driver"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tmp_path_factory.mktemp("chromium-profile")
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--window-size=1280,800",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def app(shared_data, tmp_path_factory):
    lakehouse, _ = build_lakehouse(shared_data, tmp_path_factory.mktemp("review-browser"))
    running = Running(lakehouse, "dr.browser")
    yield running
    running.close()


def _wait(driver, condition, timeout=30):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(lambda d: condition(d))


def _ready(driver):
    _wait(driver, lambda d: d.execute_script("return document.body.dataset.ready === 'true'"))


def _case_loaded(driver, not_id=None):
    """Wait until a case other than ``not_id`` is shown with its image; return its id."""

    def loaded(d):
        return d.execute_script(
            "const id = document.body.dataset.case, img = document.getElementById('image');"
            "return id && id !== arguments[0] && !document.getElementById('case-view').hidden"
            " && img.complete && img.naturalWidth > 0"
            " && decodeURIComponent(location.hash.slice(7)) === id ? id : null",
            not_id,
        )

    return _wait(driver, loaded)


def _keys(driver, *keys):
    from selenium.webdriver.common.action_chains import ActionChains

    chain = ActionChains(driver)
    for k in keys:
        chain.send_keys(k)
    chain.perform()


def _viewport(driver, width, height):
    """Make the page's viewport exactly width x height CSS pixels (as a monitor of that size
    shows it without browser chrome)."""
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
    )
    _wait(
        driver,
        lambda d: (
            d.execute_script("return [window.innerWidth, window.innerHeight]") == [width, height]
        ),
    )
    driver.execute_script("window.dispatchEvent(new Event('resize'))")


def _screens(driver, name):
    out = Path(os.environ.get("CXRLAKE_REVIEW_SCREENSHOTS", REPO / "target" / "review-screenshots"))
    out.mkdir(parents=True, exist_ok=True)
    for width, height in SIZES:
        _viewport(driver, width, height)
        overflow = driver.execute_script(
            "return document.documentElement.scrollWidth - window.innerWidth"
        )
        assert overflow <= 0, f"{name} at {width}x{height} overflows by {overflow}px"
        if name.startswith("case"):
            box = driver.execute_script(
                "const v = document.getElementById('viewport').getBoundingClientRect();"
                "const p = document.querySelector('.panel').getBoundingClientRect();"
                "return [v.width, v.height, p.right, window.innerWidth, window.innerHeight];"
            )
            assert box[0] > 400 and box[1] > 300 and box[2] <= box[3] + 1, box
        path = out / f"review-{name}-{width}x{height}.png"
        assert driver.save_screenshot(str(path))
        assert path.stat().st_size > 10_000


def test_review_three_cases_with_the_keyboard_then_reload(browser, app):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver = browser
    _viewport(driver, 1280, 800)
    driver.get(app.url + "/")
    _ready(driver)
    rows = driver.find_elements(By.CSS_SELECTOR, "#worklist-body tr")
    assert len(rows) == 8
    assert "0 of 8 reviewed" in driver.find_element(By.ID, "progress-text").text
    _screens(driver, "worklist")

    driver.execute_script("window.sameDocument = 'yes'")  # gone if the page reloads
    _keys(driver, Keys.ENTER)
    first = _case_loaded(driver)
    assert first == rows[0].get_attribute("data-prediction-id")
    _screens(driver, "case")
    _keys(driver, "a", "3", Keys.ENTER)
    second = _case_loaded(driver, first)
    _keys(driver, "d", "1", Keys.ENTER)
    third = _case_loaded(driver, second)
    _keys(driver, "u", "c")
    assert driver.switch_to.active_element.get_attribute("id") == "comment"
    driver.switch_to.active_element.send_keys(COMMENT)
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).key_down(Keys.CONTROL).send_keys(Keys.ENTER).key_up(Keys.CONTROL).perform()
    _case_loaded(driver, third)

    # three cases reviewed and the next one loaded, all without a page load
    assert driver.execute_script("return window.sameDocument") == "yes"
    reviewed = {first: "agree", second: "disagree", third: "uncertain"}
    rows = {r["prediction_id"]: r for r in app.store.feedback()}
    assert {pid: r["feedback_type"] for pid, r in rows.items()} == reviewed
    assert rows[first]["confidence_level"] == "high"
    assert rows[second]["confidence_level"] == "low"
    assert rows[second]["correct_label"] in ("NORMAL", "PNEUMONIA")
    assert rows[third]["comments"] == COMMENT
    assert {r["radiologist_id"] for r in rows.values()} == {"dr.browser"}

    driver.refresh()
    _ready(driver)
    driver.get(app.url + "/#/")
    driver.refresh()
    _ready(driver)
    _wait(driver, lambda d: "3 of 8 reviewed" in d.find_element(By.ID, "progress-text").text)
    shown = {
        r.get_attribute("data-prediction-id"): r.find_element(By.CSS_SELECTOR, ".my-verdict").text
        for r in driver.find_elements(By.CSS_SELECTOR, "#worklist-body tr")
    }
    assert {pid: shown[pid] for pid in reviewed} == reviewed
    assert sum(1 for v in shown.values() if v) == 3

    # the comment shows as text: no element injected, no script run
    driver.get(app.url + "/#/case/" + third)
    driver.refresh()
    _ready(driver)
    _case_loaded(driver)
    texts = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#verdict-list .comment-text")]
    assert texts == [COMMENT.replace("\n", " ").strip()] or COMMENT in texts[0]
    assert driver.find_elements(By.ID, "injected") == []
    assert driver.execute_script("return window.pwned === undefined")

    # filter: reviewed by me shows exactly the three
    driver.get(app.url + "/#/")
    _ready(driver)
    from selenium.webdriver.support.select import Select

    Select(driver.find_element(By.ID, "f-reviewed")).select_by_value("mine")
    _wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#worklist-body tr")) == 3)
    severe = [
        e
        for e in driver.get_log("browser")
        if e["level"] == "SEVERE" and "favicon" not in e["message"]
    ]
    assert severe == []


def test_heatmap_overlay_toggles_when_the_prediction_has_a_map(browser, app):
    from selenium.webdriver.common.by import By

    driver = browser
    items = app.get("/api/worklist")[1]["items"]
    with_map = next(i for i in items if i["has_heatmap"])
    without = next(i for i in items if not i["has_heatmap"])
    _viewport(driver, 1280, 800)
    driver.get(app.url + "/#/case/" + with_map["prediction_id"])
    driver.refresh()
    _ready(driver)
    _case_loaded(driver)
    canvas = driver.find_element(By.ID, "heatmap")
    assert driver.find_element(By.ID, "heatmap-toggle-label").is_displayed()
    assert not canvas.is_displayed()
    _keys(driver, "h")
    _wait(driver, lambda d: d.find_element(By.ID, "heatmap").is_displayed())
    size = driver.execute_script(
        "const c = document.getElementById('heatmap'), i = document.getElementById('image');"
        "const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "let lit = 0; for (let k = 3; k < px.length; k += 4) if (px[k] > 0) lit++;"
        "return [c.width, c.height, i.naturalWidth, i.naturalHeight, lit];"
    )
    assert size[:2] == size[2:4] and size[4] > 0
    # window/level and zoom keys change the view
    before = driver.execute_script("return document.getElementById('wl-r').getAttribute('slope')")
    _keys(driver, "[", "[", "+")
    after = driver.execute_script("return document.getElementById('wl-r').getAttribute('slope')")
    assert float(after) > float(before)
    _keys(driver, "f")
    assert driver.find_element(By.ID, "zoom-text").text == "100%"
    _keys(driver, "0", "r")
    _screens(driver, "case-heatmap")
    _keys(driver, "h")
    _wait(driver, lambda d: not d.find_element(By.ID, "heatmap").is_displayed())

    driver.get(app.url + "/#/case/" + without["prediction_id"])
    driver.refresh()
    _ready(driver)
    _case_loaded(driver)
    assert not driver.find_element(By.ID, "heatmap-toggle-label").is_displayed()
    assert driver.find_element(By.ID, "heatmap-none").is_displayed()
