"""Task.preprocess_upload and Task.predict: images and feature vectors from a browser."""

from __future__ import annotations

import io
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
from PIL import Image, ImageDraw

from clients.tasks import get_task


def _png(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def _dark_shirt_on_white(size: tuple[int, int] = (120, 100)) -> Image.Image:
    img = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(img)
    w, h = size
    draw.rectangle([w // 4, h // 4, 3 * w // 4, 3 * h // 4], fill=(20, 30, 40))
    return img


def test_png_light_background_is_inverted() -> None:
    task = get_task("fashion")
    x = task.preprocess_upload(_png(_dark_shirt_on_white()), "image/png")
    assert x.shape == (28, 28, 1) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    # Dataset convention: dark border, light object in the middle.
    assert x[0, :, 0].mean() < 0.05 and x[:, 0, 0].mean() < 0.05
    assert x[12:16, 12:16, 0].mean() > 0.8


def test_dark_background_not_inverted_and_jpeg() -> None:
    task = get_task("fashion")
    img = Image.new("L", (56, 56), 0)
    ImageDraw.Draw(img).ellipse([14, 14, 42, 42], fill=230)
    x = task.preprocess_upload(_png(img, "JPEG"), "image/jpeg")
    assert x[0, :, 0].mean() < 0.05
    assert x[14, 14, 0] > 0.7


def test_transparent_png_and_sniffed_content_type() -> None:
    task = get_task("digits")
    img = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    ImageDraw.Draw(img).rectangle([15, 5, 25, 35], fill=(0, 0, 0, 255))  # black stroke
    # Browsers sometimes send octet-stream: the PNG magic is enough.
    x = task.preprocess_upload(_png(img), "application/octet-stream")
    assert x.shape == (8, 8, 1)
    assert x[0, 0, 0] < 0.05 and x[4, 4, 0] > 0.5


def test_dataset_image_survives_png_roundtrip() -> None:
    """A digits test image drawn dark-on-light comes back close to the original."""
    task = get_task("digits")
    data = task.load_data()
    model = task.build_model(seed=0)
    from clients.tasks.weights import get_flat_weights
    from clients.training import train_local

    train_local(task, model, get_flat_weights(model), data.x_train, data.y_train, 10, 32, 0.1, 0)
    hits = 0
    for i in range(20):
        orig = data.x_test[i, :, :, 0]
        pixels = (255 - np.round(orig * 255)).astype(np.uint8)  # dark ink on white paper
        big = Image.fromarray(pixels, mode="L").resize((64, 64), Image.Resampling.NEAREST)
        x = task.preprocess_upload(_png(big), "image/png")
        assert np.abs(x[:, :, 0] - orig).mean() < 0.1
        pred = task.predict(model, x)
        hits += pred["label"] == int(data.y_test[i])
    assert hits >= 15


def test_predict_shape_classifier() -> None:
    task = get_task("fashion")
    model = task.build_model(seed=0)
    out = task.predict(model, np.zeros(task.input_shape, np.float32))
    assert set(out) == {"label", "class_name", "scores", "value"}
    assert out["class_name"] == task.class_names[out["label"]]
    assert len(out["scores"]) == 10 and sum(out["scores"]) == pytest.approx(1.0, abs=1e-5)
    json.dumps(out)  # JSON-safe
    with pytest.raises(ValueError, match="shape"):
        task.predict(model, np.zeros((28, 28), np.float32))


def test_linreg_features_json_and_csv() -> None:
    task = get_task("linreg")
    feats = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    a = task.preprocess_upload(json.dumps({"features": feats}).encode(), "application/json")
    b = task.preprocess_upload(json.dumps(feats).encode(), "application/json; charset=utf-8")
    c = task.preprocess_upload(b"0.1,0.2,0.3,0.4\n0.5, 0.6, 0.7, 0.8\n", "text/csv")
    for v in (a, b, c):
        np.testing.assert_allclose(v, feats, rtol=1e-6)
        assert v.shape == (8,) and v.dtype == np.float32
    model = task.build_model(seed=0)
    out = task.predict(model, a)
    assert out["label"] is None and out["class_name"] is None and isinstance(out["value"], float)


def test_image_task_accepts_pixel_vector() -> None:
    task = get_task("digits")
    x = task.preprocess_upload(json.dumps({"features": [0.5] * 64}).encode(), "application/json")
    assert x.shape == (8, 8, 1)


@pytest.mark.parametrize(
    ("task_name", "data", "ctype", "match"),
    [
        ("linreg", b"", "text/csv", "empty"),
        ("linreg", b"1,2,3", "text/csv", "expected 8 features, got 3"),
        ("linreg", b"1,2,x,4,5,6,7,8", "text/csv", "not a number"),
        ("linreg", b'{"feats": [1]}', "application/json", "features"),
        ("linreg", b"{not json", "application/json", "invalid JSON"),
        ("linreg", b'{"features": [1,2,3,4,5,6,7,"NaN"]}', "application/json", "finite|number"),
        ("linreg", b"\x89PNG\r\n\x1a\nxxxx", "image/png", "not an image"),
        ("fashion", b"\x89PNG\r\n\x1a\n garbage", "image/png", "could not decode"),
        ("fashion", b"\xff\xfe\x00binary", "application/octet-stream", "neither an image"),
        ("fashion", b"1,2,3", "text/csv", "784"),
    ],
)
def test_bad_uploads_raise_value_error(task_name: str, data: bytes, ctype: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        get_task(task_name).preprocess_upload(data, ctype)


def test_huge_image_refused_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    from clients.tasks import upload

    monkeypatch.setattr(upload, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ValueError, match="pixels"):
        get_task("fashion").preprocess_upload(_png(Image.new("L", (11, 10))), "image/png")
