"""PNG previews for a person to look at: the three inputs and the synthetic contrast in three planes."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

__all__ = ["mosaic", "write_png"]


def write_png(path: Path, image: np.ndarray) -> None:
    """Write a 2-D uint8 array as an 8-bit greyscale PNG (no dependency beyond zlib)."""
    if image.ndim != 2 or image.dtype != np.uint8:
        raise ValueError("write_png takes a 2-D uint8 array")
    height, width = image.shape
    raw = b"".join(b"\x00" + image[row].tobytes() for row in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6))
    path.write_bytes(png + chunk(b"IEND", b""))


def _to_uint8(plane: np.ndarray, high: float) -> np.ndarray:
    scaled = np.clip(plane / high if high > 0 else plane, 0.0, 1.0)
    return (scaled * 255).round().astype(np.uint8)


def mosaic(volumes: list[np.ndarray], centre: tuple[int, int, int] | None = None) -> np.ndarray:
    """Rows of volumes (L, P, S ordered, same shape), columns axial / coronal / sagittal slices through
    ``centre`` (default: the middle), each volume scaled by its own 99.5th percentile."""
    shape = volumes[0].shape
    c = centre or tuple(s // 2 for s in shape)
    tile = max(shape)
    rows = []
    for vol in volumes:
        high = float(np.percentile(vol, 99.5)) if np.any(vol) else 1.0
        # rows follow P (anterior at the top) or S flipped (superior at the top); patient left on the
        # right of axial and coronal views, as radiologists read them
        planes = [vol[:, :, c[2]].T, vol[:, c[1], :].T[::-1], vol[c[0], :, :].T[::-1]]
        tiles = []
        for plane in planes:
            canvas = np.zeros((tile, tile), dtype=np.uint8)
            h, w = plane.shape
            canvas[(tile - h) // 2 : (tile - h) // 2 + h, (tile - w) // 2 : (tile - w) // 2 + w] = _to_uint8(
                plane, high
            )
            tiles.append(canvas)
        rows.append(np.concatenate(tiles, axis=1))
    return np.concatenate(rows, axis=0)
