"""Turn an uploaded file (image or feature vector) into one model input.

Used by the server's ``POST /v1/predict``. The bytes come from an untrusted browser, so
everything here validates and raises ``ValueError`` with a message that can be shown to
the user as is; nothing is written to disk, nothing is kept.
"""

from __future__ import annotations

import csv
import io
import json
import math

import numpy as np

#: Refuse images larger than this many pixels before decoding them (decompression bombs).
MAX_IMAGE_PIXELS = 4096 * 4096

_IMAGE_MAGIC: tuple[bytes, ...] = (
    b"\x89PNG\r\n\x1a\n",  # PNG
    b"\xff\xd8\xff",  # JPEG
    b"GIF87a",
    b"GIF89a",
    b"BM",  # BMP
)


def looks_like_image(data: bytes, content_type: str) -> bool:
    """True if the content type says image/* or the bytes start with a known image magic."""
    ctype = _base_type(content_type)
    if ctype.startswith("image/"):
        return True
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return True
    return any(data.startswith(m) for m in _IMAGE_MAGIC)


def _base_type(content_type: str) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def image_to_array(data: bytes, size: tuple[int, int]) -> np.ndarray:
    """Decode an image and make it look like a light-on-dark dataset image.

    Steps: decode with Pillow (honouring EXIF orientation), flatten any alpha channel onto
    white, convert to 8-bit grayscale, invert if the background (the mean of the border
    pixels) is light, pad to a square with the background, resize to ``size`` (height,
    width), scale to [0, 1]. Returns float32 of shape ``size``.

    Raises ValueError if the bytes are not a decodable image or it is too large.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        img: Image.Image = Image.open(io.BytesIO(data))
        w, h = img.size
        if w < 1 or h < 1 or w * h > MAX_IMAGE_PIXELS:
            raise ValueError(
                f"image is {w}x{h} pixels; allowed 1..{MAX_IMAGE_PIXELS} pixels in total"
            )
        img.load()
        img = ImageOps.exif_transpose(img) or img
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            img = Image.alpha_composite(background, rgba)
        gray = img.convert("L")
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ValueError(f"could not decode the uploaded image: {exc}") from exc

    arr = np.asarray(gray, dtype=np.float32)
    border = np.concatenate([arr[0, :], arr[-1, :], arr[:, 0], arr[:, -1]])
    if float(border.mean()) > 127.5:
        arr = 255.0 - arr  # light background -> dark background, like the datasets
    # Pad to a square with the (now dark) background so resizing keeps the aspect ratio.
    h, w = arr.shape
    side = max(h, w)
    fill = float(np.median(np.concatenate([arr[0, :], arr[-1, :], arr[:, 0], arr[:, -1]])))
    square = np.full((side, side), fill, dtype=np.float32)
    top, left = (side - h) // 2, (side - w) // 2
    square[top : top + h, left : left + w] = arr
    img_sq = Image.fromarray(np.clip(square, 0, 255).astype(np.uint8), mode="L")
    out_h, out_w = size
    resized = img_sq.resize((out_w, out_h), resample=Image.Resampling.LANCZOS)
    return np.asarray(resized, dtype=np.float32) / 255.0


def parse_features(data: bytes, content_type: str, n_features: int) -> np.ndarray:
    """Parse a feature vector sent as JSON or CSV/plain text.

    JSON: ``{"features": [..]}`` or a bare list (nested lists are flattened).
    CSV / text: numbers separated by commas, semicolons, whitespace or newlines.
    Returns float32 of length ``n_features``; raises ValueError on anything else.
    """
    ctype = _base_type(content_type)
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"upload is neither an image nor UTF-8 text (content type {content_type!r})"
        ) from exc
    if not text:
        raise ValueError("upload is empty")
    values: list[float]
    if ctype.endswith("json") or text[0] in "[{":
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"invalid JSON: {exc}") from exc
        if isinstance(obj, dict):
            if "features" not in obj:
                raise ValueError(f"JSON object needs a 'features' list; got keys {sorted(obj)}")
            obj = obj["features"]
        try:
            arr = np.asarray(obj, dtype=np.float64).ravel()
        except (TypeError, ValueError) as exc:
            raise ValueError(f"'features' must be a list of numbers: {exc}") from exc
        values = arr.tolist()
    else:
        values = []
        for row in csv.reader(io.StringIO(text.replace(";", ","))):
            for cell in row:
                for tok in cell.split():
                    try:
                        values.append(float(tok))
                    except ValueError as exc:
                        raise ValueError(f"not a number in CSV upload: {tok!r}") from exc
    if len(values) != n_features:
        raise ValueError(f"expected {n_features} features, got {len(values)}")
    if not all(math.isfinite(v) for v in values):
        raise ValueError("features must be finite numbers (no NaN or infinity)")
    return np.asarray(values, dtype=np.float32)
