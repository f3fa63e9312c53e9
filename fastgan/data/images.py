"""One image, from bytes to pixels and back: used by the shard writer, the training
stream and the data benchmark alike, so that all three decode the same way.

Only Pillow and numpy here: shard-writing worker processes import this module alone.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps

#: Extensions read as images, in source folders and inside shards.
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp")
#: Formats ``fastgan shards`` writes, by extension.
WRITE_FORMATS = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}
CROPS = ("center", "pad", "none")

_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def image_member(sample: dict) -> str | None:
    """The extension under which a shard sample holds its image, if any."""
    return next((ext for ext in IMAGE_EXTS if ext in sample), None)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow image as 8-bit RGB.

    Transparent pixels are composited over white (what a viewer shows for sprites and
    product photos, where the colour under alpha 0 is arbitrary); 16-bit greyscale is
    scaled to 8 bits rather than clipped (Pillow's own convert would turn it white).
    """
    if img.mode == "RGB":
        return img
    if img.mode in _SIXTEEN_BIT:
        a = np.asarray(img)
        if a.max(initial=0) > 255 or img.mode != "I":
            a = np.round(a.astype(np.float32) / 257.0)
        return Image.fromarray(a.clip(0, 255).astype(np.uint8), "L").convert("RGB")
    if img.mode == "F":
        return Image.fromarray(np.asarray(img).clip(0, 255).astype(np.uint8), "L").convert("RGB")
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        out = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        out.alpha_composite(rgba)
        return out.convert("RGB")
    return img.convert("RGB")


def center_square(img: Image.Image) -> Image.Image:
    w, h = img.size
    if w == h:
        return img
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    return img.crop((left, top, left + s, top + s))


def pad_square(img: Image.Image) -> Image.Image:
    """Letterbox to a square on black, the image centred."""
    w, h = img.size
    if w == h:
        return img
    s = max(w, h)
    out = Image.new("RGB", (s, s))
    out.paste(img, ((s - w) // 2, (s - h) // 2))
    return out


def decode_image(data: bytes, res: int) -> np.ndarray:
    """Encoded bytes -> uint8 ``res x res x 3`` for training: centre crop, then resize.

    The hot path of the loader. JPEGs at least twice the target size are decoded
    straight to a reduced size (Pillow's ``draft``: scaling in the DCT domain), which is
    about 3x faster than decoding the full image and resizing.
    """
    img = Image.open(io.BytesIO(data))
    if img.format == "JPEG" and min(img.size) >= 2 * res:
        img.draft("RGB", (res, res))
    img = center_square(to_rgb(img))
    if img.size != (res, res):
        img = img.resize((res, res), Image.BICUBIC, reducing_gap=2.0)
    return np.asarray(img)


def prepare_image(data: bytes, res: int | None, crop: str) -> Image.Image:
    """Encoded bytes -> an upright RGB image for a shard: crop or pad, then resize.

    Quality before speed here (this runs once per dataset): EXIF orientation applied,
    JPEG draft only down to twice the target size, then a Lanczos resize.
    """
    img = Image.open(io.BytesIO(data))
    if res is not None and img.format == "JPEG":  # (2r, 2r): right whatever the rotation
        img.draft("RGB", (2 * res, 2 * res))
    img = ImageOps.exif_transpose(img)
    img = to_rgb(img)
    if crop == "center":
        img = center_square(img)
    elif crop == "pad":
        img = pad_square(img)
    if res is not None and img.size != (res, res):
        img = img.resize((res, res), Image.LANCZOS)
    return img


def encode_image(img: Image.Image, ext: str, quality: int) -> bytes:
    buf = io.BytesIO()
    fmt = WRITE_FORMATS[ext]
    if fmt == "PNG":
        img.save(buf, format=fmt)
    else:
        img.save(buf, format=fmt, quality=quality)
    return buf.getvalue()
