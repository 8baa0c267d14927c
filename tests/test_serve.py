"""`agestimate serve`: the real server in a subprocess on 127.0.0.1, called over HTTP."""

import io
import socket
import sys
import threading
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="needs the serve extra")
httpx = pytest.importorskip("httpx")

from PIL import Image  # noqa: E402

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))

import serve_load  # noqa: E402
from conftest import PATIENCE_SECONDS, wait_until  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"
PHOTO = FIXTURES / "fgnet" / "001A02.JPG"
MAX_PIXELS = 1_000_000
QUEUE_SIZE = 2


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for the module: 1 MB uploads, a million pixels, two requests in work at once."""
    log = tmp_path_factory.mktemp("serve") / "server.log"
    with serve_load.running_server("--max-upload-mb", "1", "--max-pixels", str(MAX_PIXELS), "--queue-size",
                                   str(QUEUE_SIZE), log_path=log, timeout=PATIENCE_SECONDS) as (url, process):
        yield url, process, log


@pytest.fixture(scope="module")
def url(server):
    return server[0]


@pytest.fixture(scope="module")
def estimator():
    from agestimate import Estimator

    return Estimator()


def post(url, body, *, multipart=True, name="photo.jpg", path="/v1/predict", **options):
    if multipart:
        return httpx.post(url + path, files={"file": (name, body)}, timeout=60, **options)
    return httpx.post(url + path, content=body, timeout=60, **options)


def assert_refused(response, status, kind, *words):
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["kind"] == kind and "Traceback" not in response.text
    for word in words:
        assert word in body["detail"], body


@pytest.mark.parametrize("multipart", [True, False], ids=["multipart", "raw body"])
def test_faces_of_each_fixture_are_the_library_s(url, estimator, multipart):
    for path in sorted(FIXTURES.glob("*/*")):
        response = post(url, path.read_bytes(), multipart=multipart, name=path.name)
        assert response.status_code == 200, response.text
        body = response.json()
        width, height = Image.open(path).size
        assert body["image"] == {"width": width, "height": height}
        expected = [face.to_dict() for face in estimator.predict(path)]
        assert len(body["faces"]) == len(expected) == 1, path.name
        assert set(body["faces"][0]) == set(expected[0])  # the schema of Face.to_dict()
        assert serve_load.same_faces(body["faces"], expected), (path.name, body["faces"], expected)


def test_group_photo_gives_every_face(url, estimator):
    photo = serve_load.photos()[-1]  # insightface's players.jpg
    body = post(url, photo.read_bytes(), name=photo.name).json()
    assert len(body["faces"]) == len(estimator.predict(photo)) > 10


def test_annotate_draws_on_the_image_as_jpeg_or_png(url, estimator):
    from agestimate.io.drawing import draw_faces
    from agestimate.io.images import load_image

    image = load_image(PHOTO)
    drawn = draw_faces(image, estimator.predict(image))
    for format, magic in [("jpeg", b"\xff\xd8"), ("png", b"\x89PNG")]:
        response = post(url, PHOTO.read_bytes(), path=f"/v1/annotate?format={format}")
        assert response.status_code == 200 and response.headers["content-type"] == f"image/{format}"
        assert response.content.startswith(magic) and response.headers["x-faces"] == "1"
        returned = load_image(response.content)
        assert returned.shape == image.shape
        if format == "png":  # lossless: exactly what draw_faces draws
            assert (returned == drawn).all()
    unknown = post(url, PHOTO.read_bytes(), path="/v1/annotate?format=gif")
    assert unknown.status_code == 422 and "format" in unknown.text


def test_health_and_model_card(url):
    health = httpx.get(url + "/v1/health").json()
    assert health["status"] == "ok" and health["queue_size"] == QUEUE_SIZE and health["max_pixels"] == MAX_PIXELS
    card = httpx.get(url + "/v1/model").json()
    assert card["model"] == "default" and card["descriptor"] and card["metrics"]["test"]["mae"] > 0
    assert card["runtime"]["backend"] in ("openvino", "onnxruntime")


@pytest.mark.parametrize("multipart", [True, False], ids=["multipart", "raw body"])
def test_bad_images_get_load_image_s_reasons(url, multipart):
    good = PHOTO.read_bytes()
    name = "photo.jpg" if multipart else "request body"
    assert_refused(post(url, b"not an image at all", multipart=multipart), 415, "not an image",
                   name, "not a recognised image format")
    assert_refused(post(url, b"%PDF-1.4\n" + b"0" * 100, multipart=multipart), 415, "not an image")
    assert_refused(post(url, good[: len(good) // 3], multipart=multipart), 422, "corrupt", name, "cannot decode image")
    assert_refused(post(url, b"", multipart=multipart), 422, "empty", "empty file (0 bytes)")
    many_pixels = io.BytesIO()
    Image.new("L", (1100, 1000)).save(many_pixels, format="PNG")
    assert_refused(post(url, many_pixels.getvalue(), multipart=multipart), 413, "too large",
                   "1100x1000 = 1100000 pixels exceeds the limit of 1000000 (max_pixels)")


def test_uploads_over_the_limit_are_413_declared_or_streamed(url):
    big = bytes(1024 * 1024 + 1)
    assert_refused(post(url, big, multipart=False), 413, "upload too large", "1048577 bytes", "1 MB (max_upload_mb)")
    assert_refused(post(url, big), 413, "upload too large")

    def chunks():  # no Content-Length: the server counts as it reads
        for _ in range(8):
            yield bytes(256 * 1024)

    assert_refused(httpx.post(url + "/v1/predict", content=chunks(), timeout=60), 413, "upload too large",
                   "more than 1048576 bytes")


def test_forms_without_a_file_or_with_two(url):
    response = httpx.post(url + "/v1/predict", data={"url": "http://example.com/a.jpg"})
    assert response.status_code == 415  # an urlencoded body is a raw body: not an image, nothing fetched
    assert_refused(httpx.post(url + "/v1/predict", files={"note": (None, "hello")}), 422, "no file", "'file'")
    two = [("file", ("a.jpg", PHOTO.read_bytes())), ("other", ("b.jpg", PHOTO.read_bytes()))]
    response = httpx.post(url + "/v1/predict", files=two)
    assert response.status_code == 400 and "Too many files" in response.json()["detail"]


def test_urls_in_requests_are_never_fetched(url):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(1.0)
    target = f"http://127.0.0.1:{listener.getsockname()[1]}/photo.jpg"
    with listener:
        assert post(url, target.encode(), multipart=False).status_code == 415
        assert post(url, target.encode(), name="photo.jpg").status_code == 415
        assert httpx.post(url + "/v1/predict", files={"url": (None, target)}).status_code == 422
        with pytest.raises(socket.timeout):
            listener.accept()


def test_a_full_queue_answers_503_at_once_and_recovers(url):
    """Uploads that have not finished hold their slots; the next request is refused right away."""
    release = threading.Event()
    answers = []

    def slow_upload():
        yield PHOTO.read_bytes()[:100]
        release.wait(PATIENCE_SECONDS)
        yield PHOTO.read_bytes()[100:]

    def hold():
        answers.append(httpx.post(url + "/v1/predict", content=slow_upload(), timeout=PATIENCE_SECONDS))

    holders = [threading.Thread(target=hold) for _ in range(QUEUE_SIZE)]
    for thread in holders:
        thread.start()
    try:
        wait_until(lambda: httpx.get(url + "/v1/health").json()["busy"] >= QUEUE_SIZE, what="the slow uploads take their slots")
        refused = post(url, PHOTO.read_bytes())
        assert_refused(refused, 503, "overloaded", "queue_size")
        assert refused.headers["retry-after"] == "1"
    finally:
        release.set()
        for thread in holders:
            thread.join()
    assert [answer.status_code for answer in answers] == [200] * QUEUE_SIZE
    assert all(len(answer.json()["faces"]) == 1 for answer in answers)
    assert post(url, PHOTO.read_bytes()).status_code == 200


def test_docs_and_page_load_nothing_from_outside(url):
    import re

    for page in ["/docs", "/redoc", "/"]:
        response = httpx.get(url + page)
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
        links = re.findall(r"""(?:src|href)\s*[=:]\s*['"]([^'"]+)['"]""", response.text)
        assert links and all(link.startswith(("/", "data:", "#")) for link in links), (page, links)
        for link in links:
            if link.startswith("/") and not link.endswith(".json"):
                assert httpx.get(url + link).status_code == 200, link
    schema = httpx.get(url + "/openapi.json").json()
    body = schema["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/octet-stream"} <= set(body)


def test_one_log_line_per_request(server):
    url, _, log = server
    post(url, (FIXTURES / "fgnet" / "003A35.JPG").read_bytes())
    post(url, b"nope", multipart=False)
    # the line is written after the answer is sent
    wait_until(lambda: " POST /v1/predict 415 faces=- " in log.read_text(), what="the log line of the refused request")
    lines = log.read_text().splitlines()
    assert any(" POST /v1/predict 200 faces=1 " in line and line.endswith(" ms") for line in lines), lines[-5:]
    assert "Traceback" not in log.read_text()


def test_internal_errors_are_json_without_a_traceback(estimator, monkeypatch):
    import asyncio

    from agestimate.apps.serve import create_app

    def broken(image, **options):
        raise RuntimeError("secret internals")

    async def call():
        app = create_app(estimator=estimator)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                return await client.post("/v1/predict", content=PHOTO.read_bytes())

    monkeypatch.setattr(estimator, "predict", broken)
    response = asyncio.run(call())
    assert response.status_code == 500
    assert response.json()["kind"] == "internal" and "secret" not in response.text and "Traceback" not in response.text


def test_serve_refuses_a_model_folder_that_is_not_one(tmp_path):
    from click.testing import CliRunner

    from agestimate.cli.main import cli

    result = CliRunner().invoke(cli, ["serve", "--model", str(tmp_path), "--port", str(serve_load.free_port())])
    assert result.exit_code == 1 and "no model card" in result.output


@pytest.mark.slow
def test_load_of_8_clients_mixing_good_and_bad_uploads(tmp_path):
    """The load benchmark at a tenth of its size: every answer as designed, no 5xx but 503."""
    with serve_load.running_server("--max-upload-mb", str(serve_load.MAX_UPLOAD_MB)) as (url, process):
        summary = serve_load.load(url, process.pid, clients=8, requests=48, warm_up=0, rss_slack_mb=float("inf"))
    assert summary["failures"] == []
    assert summary["statuses"][200] > 30 and {413, 415, 422} <= set(summary["statuses"])
