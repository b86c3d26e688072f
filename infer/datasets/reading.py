"""Read images and label maps, and write PNGs atomically.

Label PNGs come in three kinds: grayscale (the value is the class), palette PNGs (the palette *index* is the
class: Pascal VOC, most annotation tools) and colour PNGs. OpenCV decodes palette PNGs to colours, so
`read_label` reads them with Pillow, which keeps a palette ("P" mode) image's indices, whatever colours the
file's palette holds (duplicates and transparency included); OpenCV decodes every other file.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from segkd.infer.fileio import atomic_path

__all__ = ["UnreadableFileError", "read_image", "read_label", "write_palette_png", "write_png"]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_PALETTE = 3
_PNG_GRAY_ALPHA = 4


class UnreadableFileError(OSError):
    """An image or label file that is missing, truncated or not an image."""


def _read_bytes(path: str | os.PathLike[str]) -> np.ndarray:
    try:
        return np.fromfile(path, np.uint8)
    except OSError as e:
        raise UnreadableFileError(f"cannot read {path}: {e.strerror or e}") from e


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode an image file to BGR uint8 (H, W, 3); palette, grayscale and 16-bit files are converted.

    Raises:
        UnreadableFileError: the file is missing, truncated or not an image.
    """
    data = _read_bytes(path)
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if img is None:
        raise UnreadableFileError(f"cannot decode image {path} (truncated or not an image file)")
    return img


def _palette_indices(raw: bytes, path: str | os.PathLike[str]) -> np.ndarray:
    """The (H, W) uint8 palette indices of palette PNG bytes ``raw`` (Pillow keeps "P" images as indices)."""
    try:
        with Image.open(io.BytesIO(raw), formats=["PNG"]) as im:
            return np.asarray(im)  # (H, W) uint8: mode "P" converts to its indices, not to colours
    except (OSError, SyntaxError, ValueError) as e:  # truncated data, bad checksums, broken chunks
        raise UnreadableFileError(f"cannot decode label {path} (truncated or not an image file)") from e


def read_label(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode a label file to its stored values without any colour conversion.

    Returns:
        (H, W) array of class values (uint8, or uint16 for 16-bit files) for grayscale and palette PNGs
        (palette indices, never colours); (H, W, 3) BGR uint8 for colour-coded masks, which the caller maps.

    Raises:
        UnreadableFileError: the file is missing, truncated or not an image.
    """
    data = _read_bytes(path)
    raw = data.tobytes()
    flag = cv2.IMREAD_UNCHANGED
    if raw[:8] == _PNG_SIGNATURE and len(raw) > 25:
        color_type = raw[25]  # IHDR is always the first chunk: 8 signature + 8 header + 9 bytes in
        if color_type == _PNG_PALETTE:
            return _palette_indices(raw, path)
        if color_type == _PNG_GRAY_ALPHA:
            flag = cv2.IMREAD_ANYDEPTH  # drop the alpha channel, keep the value channel
    label = cv2.imdecode(data, flag) if data.size else None
    if label is None:
        raise UnreadableFileError(f"cannot decode label {path} (truncated or not an image file)")
    if label.ndim == 3 and label.shape[2] == 4:
        label = label[..., :3]
    return label


def write_png(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Encode ``array`` (BGR or single-channel) as PNG and publish it at ``path`` atomically."""
    ok, buf = cv2.imencode(".png", array)
    assert ok, f"PNG encoding failed for an array of shape {array.shape} and dtype {array.dtype}"
    with atomic_path(Path(path)) as tmp:
        tmp.write_bytes(buf.tobytes())


def write_palette_png(path: str | os.PathLike[str], labels: np.ndarray, palette: list[list[int]]) -> None:
    """Write class ids (H, W) as a palette PNG: pixel value = class id, palette entry = the class colour (RGB).

    :func:`read_label` (and every dataset reader) reads the ids back; viewers show the colours. Ids without a
    palette entry (255 = ignore) show black. More than 256 classes cannot be a palette PNG: a 16-bit grayscale
    PNG of the ids is written instead.
    """
    if labels.ndim != 2:
        raise ValueError(f"labels must be (H, W), got shape {labels.shape}")
    if labels.size and int(labels.max()) > 255:
        write_png(path, labels.astype(np.uint16))
        return
    image = Image.fromarray(labels.astype(np.uint8))  # mode "L": the ids
    colors = np.zeros((256, 3), np.uint8)  # all 256 entries: ids without a class colour show black
    colors[: min(len(palette), 256)] = np.asarray(palette, np.uint8)[:256]
    image.putpalette(colors.tobytes())  # "L" becomes "P": the same bytes, now palette indices
    with atomic_path(Path(path)) as tmp:
        image.save(tmp, format="PNG")
