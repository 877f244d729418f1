import struct
import zlib

import numpy as np

from brasyn.preview import mosaic, write_png


def _read_png(path):
    raw = path.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(raw):
        (length,) = struct.unpack(">I", raw[pos : pos + 4])
        kind = raw[pos + 4 : pos + 8]
        data = raw[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", raw[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + data)
        chunks[kind] = chunks.get(kind, b"") + data
        pos += 12 + length
    width, height = struct.unpack(">II", chunks[b"IHDR"][:8])
    rows = zlib.decompress(chunks[b"IDAT"])
    pixels = np.frombuffer(rows, np.uint8).reshape(height, width + 1)
    assert (pixels[:, 0] == 0).all()
    return pixels[:, 1:]


def test_png_round_trips_its_pixels(tmp_path):
    image = (np.arange(12 * 7) % 256).astype(np.uint8).reshape(12, 7)
    write_png(tmp_path / "x.png", image)
    np.testing.assert_array_equal(_read_png(tmp_path / "x.png"), image)


def test_mosaic_has_a_row_per_volume_and_a_column_per_plane():
    vols = [np.random.default_rng(i).random((10, 12, 8)).astype(np.float32) for i in range(4)]
    out = mosaic(vols)
    assert out.shape == (4 * 12, 3 * 12) and out.dtype == np.uint8
    assert out[:12].any() and out[-12:].any()
