"""The page of `agestimate serve` in headless Chromium (Debian's chromium + chromium-driver, via
Selenium): upload and drop photos, find the drawn boxes and the table; a screenshot is kept in
test-artifacts/. Nothing is downloaded: the browser and its driver must be installed."""

import base64
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="needs the serve extra")
pytest.importorskip("selenium", reason="needs selenium (dev extra)")

from PIL import Image  # noqa: E402

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))

import serve_load  # noqa: E402

ROOT = Path(__file__).parents[1]
ARTIFACTS = ROOT / "test-artifacts"
FIXTURES = Path(__file__).parent / "fixtures"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
COLOURS = {"male": (66, 135, 245), "female": (245, 66, 170)}  # as agestimate/drawing.py and the page
# Men and women from 3 to 70 years old (UTKFace file names: age_gender_race_date).
COLLAGE = ["25_0_0_20170102233320979", "25_1_0_20170116003513392", "70_1_0_20170109150852960",
           "3_0_2_20161219151511755", "45_0_0_20170104000913421", "25_1_2_20170116175126325"]

pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                reason="no Chromium here: apt-get install chromium chromium-driver (.ci/run does)")


def collage(path: Path, margin: int = 40) -> Path:
    """Six UTKFace fixture photos on a white sheet, three by two: one photo with six faces."""
    tiles = [np.asarray(Image.open(FIXTURES / "utkface" / f"{name}.jpg.chip.jpg").convert("RGB")) for name in COLLAGE]
    side = tiles[0].shape[0]
    sheet = np.full((2 * side + 3 * margin, 3 * side + 4 * margin, 3), 255, np.uint8)
    for index, tile in enumerate(tiles):
        top, left = margin + (index // 3) * (side + margin), margin + (index % 3) * (side + margin)
        sheet[top : top + side, left : left + side] = tile
    Image.fromarray(sheet).save(path, quality=95)
    return path


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    with serve_load.running_server(log_path=tmp_path_factory.mktemp("browser") / "server.log") as (url, _):
        yield url


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                     "--window-size=1100,1300", f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"]:
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_script_timeout(60)
    yield driver
    driver.quit()


def wait_for_result(driver, previous_status=""):
    """Wait until the page shows an answer (faces or an error); returns (status, error) texts."""
    from selenium.webdriver.support.ui import WebDriverWait

    def answered(driver):
        status = driver.find_element("id", "status").text
        error = driver.find_element("id", "error").text
        done = error or (status and not status.startswith("Analysing") and status != previous_status)
        return (status, error) if done else False

    return WebDriverWait(driver, 90).until(answered)


def table_rows(driver) -> list[list[str]]:
    return [[cell.text for cell in row.find_elements("tag name", "td")]
            for row in driver.find_elements("css selector", "#faces tbody tr")]


def canvas_pixel(driver, x: float, y: float) -> tuple[int, ...]:
    return tuple(driver.execute_script(
        "return Array.from(document.getElementById('result').getContext('2d')"
        ".getImageData(arguments[0], arguments[1], 1, 1).data)", int(x), int(y))[:3])


def assert_only_local_resources(driver, url):
    loaded = driver.execute_script("return performance.getEntriesByType('resource').map((entry) => entry.name)")
    outside = [name for name in loaded if not name.startswith((url, "data:", "blob:"))]
    assert not outside, outside


def test_upload_a_photo_and_see_boxes_and_table(browser, url, tmp_path):
    import httpx

    photo = collage(tmp_path / "six-faces.jpg")
    expected = httpx.post(url + "/v1/predict", files={"file": (photo.name, photo.read_bytes())}, timeout=60).json()
    assert len(expected["faces"]) == len(COLLAGE)

    browser.get(url + "/")
    browser.find_element("id", "file").send_keys(str(photo))
    status, error = wait_for_result(browser)
    assert not error and status.startswith(f"{len(COLLAGE)} faces in six-faces.jpg"), status

    canvas = browser.find_element("id", "result")
    assert canvas.is_displayed() and canvas.get_attribute("data-faces") == str(len(COLLAGE))
    assert (int(canvas.get_attribute("width")), int(canvas.get_attribute("height"))) == Image.open(photo).size
    rows = table_rows(browser)
    assert len(rows) == len(COLLAGE)
    for row, face in zip(rows, expected["faces"]):
        assert row[1] == f"{face['age']:.1f}" and row[4] == face["gender"] and row[3] == face["age_group"]
        x1, y1, x2, y2 = face["box"]
        assert canvas_pixel(browser, x1, (y1 + y2) / 2) == COLOURS[face["gender"]]  # the box's left edge
        assert canvas_pixel(browser, (x1 + x2) / 2, (y1 + y2) / 2) != COLOURS[face["gender"]]  # the face inside
    assert {face["gender"] for face in expected["faces"]} == {"male", "female"}

    ARTIFACTS.mkdir(exist_ok=True)
    assert browser.save_screenshot(str(ARTIFACTS / "serve-page.png"))
    assert_only_local_resources(browser, url)


def test_drop_a_photo_and_see_an_error_for_a_bad_file(browser, url):
    browser.get(url + "/")
    photo = FIXTURES / "fgnet" / "001A43a.JPG"
    drop = """
        const [name, data] = arguments;
        const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], name, { type: "image/jpeg" }));
        document.getElementById("drop").dispatchEvent(new DragEvent("drop", { dataTransfer: transfer, bubbles: true }));
    """
    browser.execute_script(drop, photo.name, base64.b64encode(photo.read_bytes()).decode())
    status, error = wait_for_result(browser)
    assert not error and status.startswith("1 face in 001A43a.JPG"), status
    assert len(table_rows(browser)) == 1

    browser.execute_script(drop, "notes.jpg", base64.b64encode(b"not an image").decode())
    _, error = wait_for_result(browser, previous_status=status)
    assert error == "415: notes.jpg: not a recognised image format"
    assert not browser.find_element("id", "faces").is_displayed()
    assert not browser.find_element("id", "result").is_displayed()


def test_api_docs_render_from_local_assets(browser, url):
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(url + "/docs")
    WebDriverWait(browser, 60).until(lambda driver: driver.find_elements("css selector", ".opblock-summary-path"))
    paths = {element.text for element in browser.find_elements("css selector", ".opblock-summary-path")}
    assert {"/v1/predict", "/v1/annotate", "/v1/health", "/v1/model"} <= paths
    assert_only_local_resources(browser, url)


def test_a_format_the_browser_cannot_draw_is_drawn_by_the_server(browser, url, tmp_path):
    tiff = tmp_path / "face.tiff"
    Image.open(FIXTURES / "fgnet" / "003A35.JPG").save(tiff)
    browser.get(url + "/")
    browser.find_element("id", "file").send_keys(str(tiff))
    status, error = wait_for_result(browser)
    assert not error and status.startswith("1 face in face.tiff"), status
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, 60).until(
        lambda driver: driver.find_element("id", "annotated") if driver.find_element("id", "annotated").is_displayed()
        and driver.execute_script("return document.getElementById('annotated').naturalWidth") else False)
    assert browser.execute_script("return document.getElementById('annotated').naturalWidth") == Image.open(tiff).width
    assert not browser.find_element("id", "result").is_displayed() and len(table_rows(browser)) == 1
