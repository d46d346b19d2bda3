"""The project's one image reader: a file (or its bytes) becomes the picture a viewer shows, or a one-line error.

Every path that hands the model an image goes through here (the UI, the API, the CLI, eval sets):

- the size is read from the header before any pixel is decoded (a 17 KB PNG can declare 144 MP);
- EXIF orientation is applied (`PIL.ImageOps.exif_transpose`): a phone photo stored sideways with
  "rotate 90°" in its EXIF is upright, as every browser shows it;
- transparency is composited on white (`alpha_on_white`), as a page shows a transparent PNG: a plain
  RGB conversion drops the alpha and leaves whatever colour the transparent pixels carry (often
  black), so two different transparent charts could decode to the same pixels;
- an extreme aspect ratio (a banner, a strip: Qwen2-VL's processor raises above 200) is padded with
  white to `MAX_ASPECT_RATIO` before the processor sees it (tiny pictures need nothing: the processor
  scales them up to its minimum itself);
- large pictures are downscaled, keeping the aspect ratio, to `MAX_MODEL_PIXELS`.

`fit_image` applies the last four rules to an in-memory image (what a library caller passes), so an
image reaches the processor the same way whichever door it came through.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

from PIL import Image, ImageOps

from merging.errors import MergescopeError
from merging.limits import MAX_IMAGE_PIXELS, LimitError

MAX_MODEL_PIXELS = 1024 * 1024   # downscale anything larger before the processor sees it
MAX_ASPECT_RATIO = 100           # long side / short side; Qwen2-VL's processor refuses above 200
WHITE = (255, 255, 255)
# the longest side a padded strip keeps: L²/R + L ≤ MAX_MODEL_PIXELS for L = √(P·R) − R, so the canvas fits
MAX_PADDED_SIDE = int((MAX_MODEL_PIXELS * MAX_ASPECT_RATIO) ** 0.5) - MAX_ASPECT_RATIO

ImageFile = str | Path | bytes   # a path, or the file's bytes (eval sets that embed their images)


def read_image(source: ImageFile, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """The RGB picture in `source` (a path or the file's bytes) as a viewer shows it, ready for the model.

    Raises LimitError for an image over `max_pixels` (checked from the header, before decoding) and
    MergescopeError, one line, for anything unreadable (not an image, truncated, a decompression bomb).
    """
    name = "the image" if isinstance(source, bytes) else Path(str(source)).name[:60]
    try:
        with warnings.catch_warnings():
            # PIL warns (not raises) between MAX_IMAGE_PIXELS/2 and MAX_IMAGE_PIXELS; refuse those too
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
                width, height = img.size
                if width * height > max_pixels:
                    raise LimitError(f"the image is {width}×{height} = {width * height / 1e6:.1f} MP; the limit is "
                                     f"{max_pixels / 1e6:.1f} MP: upload a smaller one")
                img.load()
                return fit_image(ImageOps.exif_transpose(img))
    except LimitError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise LimitError(f"{name}: the image declares more than {max_pixels / 1e6:.1f} MP; upload a smaller "
                         f"one") from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError):
        # UnidentifiedImageError (an OSError), "image file is truncated", broken chunks, ...
        raise MergescopeError(f"{name}: not a readable image (PNG, JPEG, WebP, GIF); upload another "
                              f"file") from None


def alpha_on_white(image: Image.Image) -> Image.Image:
    """`image` in RGB, its transparent parts (alpha channel, or a palette's transparent colour) on white."""
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, WHITE + (255,))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def fit_image(image: Image.Image) -> Image.Image:
    """`image` as the processor should get it: RGB with alpha on white, padded to an aspect ratio of at
    most MAX_ASPECT_RATIO (white below or right of it), at most MAX_MODEL_PIXELS.

    Raises LimitError for an image over MAX_IMAGE_PIXELS (what `read_image` refuses from the header).
    Idempotent: a fitted image comes back unchanged.
    """
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        raise LimitError(f"the image is {width}×{height} = {width * height / 1e6:.1f} MP; the limit is "
                         f"{MAX_IMAGE_PIXELS / 1e6:.1f} MP")
    image = alpha_on_white(image)
    long_side, short_side = max(width, height), min(width, height)
    wanted = -(-long_side // MAX_ASPECT_RATIO)  # ceil: the ratio ends ≤ MAX_ASPECT_RATIO
    if short_side < wanted:
        if long_side > MAX_PADDED_SIDE:  # shrink a long strip first, so that the padded canvas fits
            scale = MAX_PADDED_SIDE / long_side
            image = image.resize((max(1, round(width * scale)), max(1, round(height * scale))))
            width, height = image.size
            wanted = -(-max(width, height) // MAX_ASPECT_RATIO)
        size = (max(width, wanted), max(height, wanted))
        canvas = Image.new("RGB", size, WHITE)
        canvas.paste(image, (0, 0))  # top left, as a page lays an image out on its background
        image, (width, height) = canvas, size
    if width * height > MAX_MODEL_PIXELS:
        image = image.resize(_within(width, height, MAX_MODEL_PIXELS))
    return image


def _within(width: int, height: int, max_pixels: int) -> tuple[int, int]:
    """The largest size of at most `max_pixels` with the long side rounded down and the short one up, so
    the aspect ratio never grows (a fitted image then fits again, unchanged)."""
    long_side, short_side = max(width, height), min(width, height)
    new_long = int(long_side * (max_pixels / (width * height)) ** 0.5)
    new_short = -(-new_long * short_side // long_side)
    while new_long * new_short > max_pixels:
        new_long -= 1
        new_short = -(-new_long * short_side // long_side)
    return (new_long, new_short) if width >= height else (new_short, new_long)
