"""Read images and label maps with OpenCV only, and write PNGs atomically.

Label PNGs come in three kinds: grayscale (the value is the class), palette PNGs (the palette *index* is the
class: Pascal VOC, most annotation tools) and colour PNGs. OpenCV decodes palette PNGs to colours, so
`read_label` swaps the palette for an identity grey ramp before decoding: every pixel then decodes to its
index, whatever colours the file's palette holds (duplicates included), and libpng still does all the
filtering and interlacing.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np

from segkd.infer.fileio import atomic_path

__all__ = ["UnreadableFileError", "read_image", "read_label", "write_palette_png", "write_png"]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_PALETTE = 3
_PNG_GRAY_ALPHA = 4
# Chunks that could make a decoder change the decoded palette entries (colour management, transparency).
_DROPPED_CHUNKS = {b"tRNS", b"gAMA", b"iCCP", b"sRGB", b"cHRM", b"sBIT"}


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


def _palette_as_indices(png: bytes) -> bytes:
    """Rewrite a palette PNG so that entry ``i`` of its palette is grey level ``i``."""
    out, pos = [png[:8]], 8
    while pos + 8 <= len(png):
        (length,) = struct.unpack(">I", png[pos : pos + 4])
        kind = png[pos + 4 : pos + 8]
        chunk = png[pos : pos + 12 + length]
        pos += 12 + length
        if kind == b"PLTE":
            body = np.repeat(np.arange(length // 3, dtype=np.uint8), 3).tobytes()  # (k*3,) grey ramp
            chunk = (
                struct.pack(">I", len(body)) + b"PLTE" + body + struct.pack(">I", zlib.crc32(b"PLTE" + body))
            )
        elif kind in _DROPPED_CHUNKS:
            continue
        out.append(chunk)
    return b"".join(out)


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
            data, flag = np.frombuffer(_palette_as_indices(raw), np.uint8), cv2.IMREAD_COLOR
        elif color_type == _PNG_GRAY_ALPHA:
            flag = cv2.IMREAD_ANYDEPTH  # drop the alpha channel, keep the value channel
    label = cv2.imdecode(data, flag) if data.size else None
    if label is None:
        raise UnreadableFileError(f"cannot decode label {path} (truncated or not an image file)")
    if flag == cv2.IMREAD_COLOR:
        return np.ascontiguousarray(label[..., 0])  # the three grey channels are equal
    if label.ndim == 3 and label.shape[2] == 4:
        label = label[..., :3]
    return label


def write_png(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Encode ``array`` (BGR or single-channel) as PNG and publish it at ``path`` atomically."""
    ok, buf = cv2.imencode(".png", array)
    assert ok, f"PNG encoding failed for an array of shape {array.shape} and dtype {array.dtype}"
    with atomic_path(Path(path)) as tmp:
        tmp.write_bytes(buf.tobytes())


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


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
    ok, buf = cv2.imencode(".png", labels.astype(np.uint8))
    assert ok, f"PNG encoding failed for labels of shape {labels.shape}"
    png = buf.tobytes()
    # A grey 8-bit PNG and a palette 8-bit PNG store the same scanlines: change IHDR's colour type, add PLTE.
    ihdr = bytearray(png[16:29])  # 13 bytes of IHDR data after signature (8), length (4) and type (4)
    ihdr[9] = _PNG_PALETTE
    colors = np.zeros((256, 3), np.uint8)
    colors[: min(len(palette), 256)] = np.asarray(palette, np.uint8)[:256]
    body = _PNG_SIGNATURE + _chunk(b"IHDR", bytes(ihdr)) + _chunk(b"PLTE", colors.tobytes()) + png[33:]
    with atomic_path(Path(path)) as tmp:
        tmp.write_bytes(body)
