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


def _screenshot(driver):
    import io

    from PIL import Image

    with Image.open(io.BytesIO(driver.get_screenshot_as_png())) as shot:
        return shot.convert("RGB")


def _points(display: dict) -> tuple[tuple[float, float], tuple[float, float]]:
    """Centres (x, y as fractions of the film) of the hottest fine cell and of a cell the overlay
    leaves transparent: below the display floor, at least two cells from any cell above it (so
    no smoothing reaches it), and the strongest such cell (an overlay that tints low values
    tints it visibly)."""
    from cxrlake.heatmap import DISPLAY_FLOOR

    rows, cols = display["rows"], display["cols"]
    values = display["values"]
    peak = max(values)
    lit = [(i // cols, i % cols) for i, v in enumerate(values) if v >= DISPLAY_FLOOR * peak]
    quiet = [
        i
        for i, v in enumerate(values)
        if v < DISPLAY_FLOOR * peak
        and all(max(abs(i // cols - r), abs(i % cols - c)) > 2 for r, c in lit)
    ]
    assert quiet, "the map lights the whole film"
    low = max(quiet, key=lambda i: values[i])
    hot = max(range(len(values)), key=lambda i: values[i])
    centre = lambda i: ((i % cols + 0.5) / cols, (i // cols + 0.5) / rows)  # noqa: E731
    return centre(hot), centre(low)


def test_heatmap_overlay_keeps_the_film_outside_the_hot_region(browser, app):
    """Screenshots with and without the map: a pixel outside the hot region is the film's own
    grey (the overlay is transparent there), a pixel at the hottest point is tinted red."""
    from selenium.webdriver.common.by import By

    driver = browser
    items = app.get("/api/worklist")[1]["items"]
    with_map = next(i for i in items if i["has_heatmap"])
    case = app.get("/api/case/" + with_map["prediction_id"])[1]
    display = case["heatmap_display"]
    assert (display["rows"], display["cols"]) == (
        4 * case["heatmap"]["rows"],
        4 * case["heatmap"]["cols"],
    )
    _viewport(driver, 1280, 800)
    driver.get(app.url + "/#/case/" + with_map["prediction_id"])
    driver.refresh()
    _ready(driver)
    _case_loaded(driver)
    assert not driver.find_element(By.ID, "heatmap").is_displayed()
    rect = driver.execute_script(
        "const r = document.getElementById('image').getBoundingClientRect();"
        "return [r.left, r.top, r.width, r.height];"
    )
    without = _screenshot(driver)
    _keys(driver, "h")
    _wait(driver, lambda d: d.find_element(By.ID, "heatmap").is_displayed())
    driver.execute_script("return new Promise(r => requestAnimationFrame(() => r()))")
    with_overlay = _screenshot(driver)
    _keys(driver, "h")
    (hot_x, hot_y), (low_x, low_y) = _points(display)

    def at(shot, fx, fy):
        return shot.getpixel((int(rect[0] + fx * rect[2]), int(rect[1] + fy * rect[3])))

    plain, shown = at(without, low_x, low_y), at(with_overlay, low_x, low_y)
    assert max(abs(a - b) for a, b in zip(plain, shown, strict=True)) <= 2, (plain, shown)
    assert plain[0] == plain[1] == plain[2]  # a grey film
    hot_plain, hot_shown = at(without, hot_x, hot_y), at(with_overlay, hot_x, hot_y)
    assert hot_shown[0] - hot_shown[2] > 40 and hot_plain[0] == hot_plain[2], (hot_plain, hot_shown)


@pytest.fixture(scope="module")
def dicom_app(shared_data, tmp_path_factory):
    """A lakehouse of one JPEG and one DICOM chest film (pydicom-data's RG1_UNCR.dcm)."""
    from dicom_support import TEST_KEY, find

    from cxrlake.lakehouse.pipeline import run_pipeline

    root = tmp_path_factory.mktemp("review-dicom")
    source = root / "src"
    (source / "NORMAL").mkdir(parents=True)
    (source / "PNEUMONIA").mkdir(parents=True)
    jpeg = sorted((shared_data / "chest_xray_fullres" / "NORMAL").glob("*.jpeg"))[0]
    shutil.copyfile(jpeg, source / "NORMAL" / jpeg.name)
    shutil.copyfile(find("RG1_UNCR.dcm"), source / "PNEUMONIA" / "RG1_UNCR.dcm")
    previous = os.environ.get("CXRLAKE_DEID_KEY")
    os.environ["CXRLAKE_DEID_KEY"] = TEST_KEY
    try:
        run_pipeline([str(source)], str(root / "lakehouse"), progress=False)
    finally:
        if previous is None:
            del os.environ["CXRLAKE_DEID_KEY"]
        else:
            os.environ["CXRLAKE_DEID_KEY"] = previous
    running = Running(root / "lakehouse", "dr.dicom")
    yield running, source / "PNEUMONIA" / "RG1_UNCR.dcm"
    running.close()


def test_review_a_dicom_case_with_window_level(browser, dicom_app):
    import io

    from PIL import Image
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    import cxrlake
    from cxrlake.medallion import schemas

    app, film = dicom_app
    silver = app.store.lh.read(
        schemas.SILVER, ["image_id", "filename", "image_width", "image_height"]
    )
    (dicom,) = [r for r in silver.to_pylist() if r["filename"] == "RG1_UNCR.dcm"]
    item = next(
        i for i in app.get("/api/worklist")[1]["items"] if i["image_id"] == dicom["image_id"]
    )
    # the film is served as the PNG the core renders: the pipeline's decode, pixel for pixel
    status, body, headers = app.request("GET", "/api/image/" + dicom["image_id"])
    assert status == 200 and headers["Content-Type"] == "image/png"
    decoded = cxrlake.decode([str(film)]).to_pylist()[0]
    with Image.open(io.BytesIO(body)) as served:
        assert served.mode == "L" and served.size == (decoded["width"], decoded["height"])
        assert served.tobytes() == decoded["pixels"]
    assert served.size == (dicom["image_width"], dicom["image_height"])

    driver = browser
    _viewport(driver, 1280, 800)
    driver.get(app.url + "/#/case/" + item["prediction_id"])
    driver.refresh()
    _ready(driver)
    _case_loaded(driver)
    natural = driver.execute_script(
        "const i = document.getElementById('image'); return [i.naturalWidth, i.naturalHeight];"
    )
    assert natural == [dicom["image_width"], dicom["image_height"]]
    rect = driver.execute_script(
        "const r = document.getElementById('image').getBoundingClientRect();"
        "return [r.left, r.top, r.width, r.height];"
    )
    centre = (int(rect[0] + rect[2] / 2), int(rect[1] + rect[3] / 3))
    before = _screenshot(driver).getpixel(centre)
    _keys(driver, "[", "[", "[", ",", ",")  # narrower window, lower level
    after = _screenshot(driver).getpixel(centre)
    assert before != after, (before, after)
    # and the case is reviewed like any other
    _keys(driver, "r")  # reset the view
    _keys(driver, "a", "2", Keys.ENTER)
    _wait(
        driver,
        lambda d: any(f["prediction_id"] == item["prediction_id"] for f in app.store.feedback()),
    )
    (verdict,) = [f for f in app.store.feedback() if f["prediction_id"] == item["prediction_id"]]
    assert verdict["feedback_type"] == "agree" and verdict["radiologist_id"] == "dr.dicom"
    severe = [
        e
        for e in driver.get_log("browser")
        if e["level"] == "SEVERE" and "favicon" not in e["message"]
    ]
    assert severe == [], severe
    assert driver.find_element(By.ID, "case-view")
