"""Regenerates the regression corpus of nasty inputs (``python tests/fuzz_corpus/make_corpus.py``).

Everything is generated (drawn pixels, crafted headers, random bytes from a fixed seed); no photo is
used. ``cases.json`` lists every case with the answers the miner may give:

- ``image``: encoded image bytes in ``images/`` sent as the request's base64 ``image`` field;
- ``b64``: the ``image`` field itself (a string that may not be base64 at all);
- ``body``: the raw request body of a correctly signed request;
- ``headers``: edits (set / delete / duplicate, values as base64 of raw bytes) applied to the headers of
  a freshly signed SN72 request, with an optional raw body.

A case found by the fuzz tests is added here (with its expected statuses) so it is replayed forever.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
OK = [200]
BAD = [400]
BIG = [413]
EITHER = [200, 400]


def _scene(w: int = 224, h: int = 224, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 100, np.uint8)
    img[h * 5 // 8 :, :] = (60, 60, 66)
    img[h // 2 : h * 6 // 7, w * 2 // 5 : w * 9 // 16] = (250, 110, 10)
    return Image.fromarray(np.clip(img + rng.integers(0, 10, img.shape), 0, 255).astype(np.uint8))


def _save(img: Image.Image, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def _png(w: int, h: int, colour_type: int = 0, idat: bytes | None = None, bit_depth: int = 8) -> bytes:
    """A hand-made PNG: the header may claim any size, the pixel data may be anything."""
    ihdr = struct.pack(">IIBBBBB", w, h, bit_depth, colour_type, 0, 0, 0)
    data = zlib.compress(b"", 9) if idat is None else idat
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def _jpeg_with_size(w: int, h: int) -> bytes:
    """A valid small JPEG whose SOF marker is rewritten to claim ``w`` x ``h``."""
    raw = bytearray(_save(_scene(16, 16), "JPEG"))
    i = raw.index(b"\xff\xc0")
    struct.pack_into(">HH", raw, i + 5, h, w)
    return bytes(raw)


def image_cases() -> dict[str, tuple[bytes, list[int]]]:
    s = _scene()
    small = _scene(96, 96)  # for the formats that barely compress
    rng = np.random.default_rng(7)
    jpeg = _save(s, "JPEG", quality=75)
    rot = Image.Exif()
    rot[0x0112] = 6
    bad_orientation = Image.Exif()
    bad_orientation[0x0112] = 99
    # one IFD entry (orientation) whose count points far past the end of the data
    corrupt_exif = b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x01\x01\x12\x00\x03" + b"\xff" * 4 + b"\x00\x06\x00\x00"
    grey16 = Image.fromarray(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16)
    flipped = bytearray(jpeg)
    for pos in rng.integers(len(jpeg) // 3, len(jpeg) - 4, 40):
        flipped[int(pos)] ^= 0xFF
    bad_crc = bytearray(_save(small, "PNG"))
    bad_crc[29] ^= 0xFF  # inside the IHDR CRC
    bmp_topdown = bytearray(_save(small, "BMP"))
    struct.pack_into("<i", bmp_topdown, 22, -96)  # negative height: rows stored top-down
    bmp_huge = bytearray(_save(_scene(8, 8), "BMP"))
    struct.pack_into("<ii", bmp_huge, 18, 60000, 60000)
    apng = _save(small, "PNG", save_all=True, append_images=[_scene(96, 96, seed=1)], duration=100)
    return {
        "jpeg_scene": (jpeg, OK),
        "jpeg_progressive": (_save(s, "JPEG", progressive=True), OK),
        "jpeg_cmyk": (_save(s.convert("CMYK"), "JPEG"), OK),
        "jpeg_grey": (_save(s.convert("L"), "JPEG"), OK),
        "jpeg_exif_rotated": (_save(_scene(160, 96), "JPEG", exif=rot.tobytes()), OK),
        "jpeg_exif_bad_orientation": (_save(s, "JPEG", exif=bad_orientation.tobytes()), OK),
        "jpeg_exif_corrupt": (_save(s, "JPEG", exif=corrupt_exif), OK),
        "jpeg_truncated_half": (jpeg[: len(jpeg) // 2], BAD),
        "jpeg_header_only": (jpeg[:300], BAD),
        "jpeg_bitflips": (bytes(flipped), EITHER),
        "jpeg_claims_65500x65500": (_jpeg_with_size(65500, 65500), BIG),
        "jpeg_claims_0x16": (_jpeg_with_size(0, 16), [400, 413]),
        "jpeg_1x8193": (_save(_scene(1, 8193), "JPEG"), BIG),
        "jpeg_8000x1": (_save(_scene(8000, 1), "JPEG"), OK),
        "jpeg_then_png_polyglot": (jpeg + _save(small, "PNG"), OK),
        "png_rgb": (_save(small, "PNG"), OK),
        "png_rgba": (_save(small.convert("RGBA"), "PNG"), OK),
        "png_la": (_save(small.convert("LA"), "PNG"), OK),
        "png_palette": (_save(small.convert("P"), "PNG"), OK),
        "png_palette_transparent": (_save(small.convert("P"), "PNG", transparency=3), OK),
        "png_1bit": (_save(small.convert("1"), "PNG"), OK),
        "png_16bit_grey": (_save(grey16, "PNG"), OK),
        "png_animated": (apng, OK),
        "png_bad_crc": (bytes(bad_crc), BAD),
        "png_0x0": (_png(0, 0), BAD),
        "png_1x100000": (_png(1, 100000, idat=zlib.compress(b"\x00\x00" * 100000, 9)), BIG),
        # 15 kB that inflates to 16 MB of pixels (48 MB RGB): inside the pixel limit, so answered
        "png_bomb_4000x4000": (_png(4000, 4000, idat=zlib.compress(b"\x00" * (4001 * 4000), 9)), OK),
        "png_bomb_claims_65535x65535": (_png(65535, 65535, idat=zlib.compress(b"\x00" * 65536, 9)), BIG),
        "png_16bit_rgb_header_garbage_data": (_png(64, 64, 2, zlib.compress(rng.bytes(100)), 16), BAD),
        "webp_lossy": (_save(s, "WEBP", quality=60), OK),
        "webp_lossless": (_save(small, "WEBP", lossless=True), OK),
        "bmp_rgb": (_save(small, "BMP"), OK),
        "bmp_top_down": (bytes(bmp_topdown), OK),
        "bmp_claims_60000x60000": (bytes(bmp_huge), BIG),
        "gif_not_accepted": (_save(small, "GIF"), BAD),
        "tiff_not_accepted": (_save(small, "TIFF"), BAD),
        "ico_not_accepted": (_save(_scene(32, 32), "ICO"), BAD),
        "svg_text": (b'<svg xmlns="http://www.w3.org/2000/svg" width="1e9" height="1e9"/>', BAD),
        "random_bytes": (rng.bytes(2048), BAD),
        "jpeg_magic_then_random": (b"\xff\xd8\xff\xe0" + rng.bytes(2048), BAD),
        "png_magic_only": (b"\x89PNG\r\n\x1a\n", BAD),
        "single_byte": (b"\x00", BAD),
    }


def b64_cases() -> dict[str, tuple[str, list[int]]]:
    return {
        "empty": ("", BAD),
        "not_base64": ("%%%not base64%%%", BAD),
        "bad_padding": ("aGVsbG8", BAD),
        "padding_only": ("====", BAD),
        "urlsafe_alphabet": (base64.urlsafe_b64encode(b"\xfb\xff" * 30).decode(), BAD),
        "newlines_inside": (base64.encodebytes(_save(_scene(), "JPEG")).decode(), BAD),
        "leading_space": (" " + base64.b64encode(_save(_scene(), "JPEG")).decode(), BAD),
        "non_ascii": ("ñandú/+==", BAD),
        "nul_chars": ("AAAA\x00AAAA", BAD),
        "data_uri": ("data:image/jpeg;base64," + base64.b64encode(_save(_scene(), "JPEG")).decode(), BAD),
        "valid_base64_of_text": (base64.b64encode(b"hello world").decode(), BAD),
        "over_size_limit": ("A" * 1_500_000, BIG),
    }


def body_cases() -> dict[str, tuple[bytes, list[int]]]:
    good = base64.b64encode(_save(_scene(), "JPEG")).decode()
    deep = b"[" * 100_000 + b"]" * 100_000
    return {
        "empty": (b"", BAD),
        "open_brace": (b"{", BAD),
        "json_array": (b"[]", BAD),
        "json_null": (b"null", BAD),
        "json_string": (b'"image"', BAD),
        "image_int": (b'{"image": 12345}', BAD),
        "image_list": (b'{"image": ["AAAA"]}', BAD),
        "image_object": (b'{"image": {"b64": "AAAA"}}', BAD),
        "image_null": (b'{"image": null}', BAD),
        "label_wrong_type": (json.dumps({"image": good, "testnet_label": "x"}).encode(), [200, 400]),
        "non_utf8": (b'{"image": "\xff\xfe\xfd"}', BAD),
        "utf16_bom": ('{"image": "AAAA"}'.encode("utf-16"), BAD),
        "nested_100k_deep": (deep, BAD),
        "duplicate_image_keys": (('{"image": "%%", "image": "' + good + '"}').encode(), EITHER),
        "nan_prediction": (('{"image": "' + good + '", "prediction": NaN}').encode(), EITHER),
        "huge_extra_field": (json.dumps({"image": good, "pad": "x" * 1_500_000}).encode(), EITHER),
        "over_body_limit": (json.dumps({"image": good, "pad": "x" * 2_200_000}).encode(), BIG),
        "many_keys": (json.dumps({"image": good, **{f"k{i}": i for i in range(5_000)}}).encode(), EITHER),
    }


def _b(v: bytes | str) -> str:
    return base64.b64encode(v.encode() if isinstance(v, str) else v).decode()


def header_cases() -> dict[str, dict[str, Any]]:
    """Edits to a freshly signed SN72 request by //Alice (a high-stake validator)."""
    d = "bt_header_dendrite_"
    return {
        "no_headers": {"clear": True, "expect": [401, 403]},
        "nonce_not_int": {"set": {d + "nonce": _b("abc")}, "expect": BAD},
        "nonce_5000_digits": {"set": {d + "nonce": _b("9" * 5000)}, "expect": BAD},
        "nonce_negative": {"set": {d + "nonce": _b("-1")}, "expect": [401]},
        "nonce_float": {"set": {d + "nonce": _b("1.5e18")}, "expect": [400, 401]},
        "timeout_nan": {"set": {"timeout": _b("nan")}, "expect": BAD},
        "timeout_inf": {"set": {"timeout": _b("inf")}, "expect": BAD},
        "timeout_overflow": {"set": {"timeout": _b("1e400")}, "expect": BAD},
        "timeout_huge_finite": {"set": {"timeout": _b("1e300")}, "expect": OK},
        "timeout_negative": {"set": {"timeout": _b("-5")}, "expect": [401]},
        "version_not_int": {"set": {d + "version": _b("9.12.2")}, "expect": BAD},
        "port_text": {"set": {"bt_header_axon_port": _b("http")}, "expect": BAD},
        "hotkey_non_utf8": {"set": {d + "hotkey": _b(b"\xff\xfe5Grw")}, "expect": [400, 403]},
        # found by test_fuzz_http: an echoed header with non-UTF-8 bytes made the reply fail (500)
        "axon_ip_non_utf8": {"set": {"bt_header_axon_ip": _b(b"\x80")}, "expect": BAD},
        "dendrite_ip_latin1": {"set": {d + "ip": _b("caf\u00e9".encode("latin-1"))}, "expect": BAD},
        "hotkey_missing": {"delete": [d + "hotkey"], "expect": [401, 403]},
        "hotkey_of_other_validator": {"set": {d + "hotkey": _b(HOTKEY_BOB)}, "expect": [401]},
        "signature_missing": {"delete": [d + "signature"], "expect": [401]},
        "signature_not_hex": {"set": {d + "signature": _b("zz" * 64)}, "expect": [401]},
        "signature_short": {"set": {d + "signature": _b("0x1234")}, "expect": [401]},
        "signature_non_utf8": {"set": {d + "signature": _b(b"0x\xff\xfe")}, "expect": [400, 401]},
        "uuid_missing": {"delete": [d + "uuid"], "expect": [401]},
        "uuid_changed": {"set": {d + "uuid": _b("other")}, "expect": [401]},
        "receiver_other_hotkey": {"set": {"bt_header_axon_hotkey": _b(HOTKEY_BOB)}, "expect": [401]},
        "body_hash_wrong": {"set": {"computed_body_hash": _b("00" * 32)}, "expect": BAD},
        "duplicate_hotkey_headers": {"dup": {d + "hotkey": _b(HOTKEY_BOB)}, "expect": [200, 401]},
        "duplicate_nonce_headers": {"dup": {d + "nonce": _b("1")}, "expect": [200, 401]},
        "header_value_16k": {"set": {d + "ip": _b("1" * 16_000)}, "expect": [400, 431]},
        "content_length_not_int": {"set": {"Content-Length": _b("abc")}, "expect": BAD},
        "gzip_bomb_body": {
            "set": {"Content-Encoding": _b("gzip"), "Content-Type": _b("application/json")},
            "body": _b(gzip.compress(b" " * 50_000_000, 9)),
            "expect": [400, 413],
        },
        "chunked_body": {"chunked": True, "expect": OK},
    }


# //Bob's hotkey (a registered validator in the test chain, not the signer).
HOTKEY_BOB = "5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty"


def main() -> None:
    images = HERE / "images"
    images.mkdir(exist_ok=True)
    for old in images.iterdir():
        old.unlink()
    cases: dict[str, Any] = {"image": {}, "b64": {}, "body": {}, "headers": header_cases()}
    for name, (data, expect) in image_cases().items():
        (images / f"{name}.bin").write_bytes(data)
        cases["image"][name] = {"file": f"images/{name}.bin", "expect": expect}
    for name, (value, expect) in b64_cases().items():
        if len(value) > 10_000:  # stored as a recipe, not 1.5 MB of "A"
            cases["b64"][name] = {"repeat": [value[0], len(value)], "expect": expect}
        else:
            cases["b64"][name] = {"value": value, "expect": expect}
    for name, (data, expect) in body_cases().items():
        if len(data) > 50_000:
            (images / f"body_{name}.gz").write_bytes(gzip.compress(data, 9))
            cases["body"][name] = {"gz_file": f"images/body_{name}.gz", "expect": expect}
        else:
            cases["body"][name] = {"b64": _b(data), "expect": expect}
    (HERE / "cases.json").write_text(json.dumps(cases, indent=1, sort_keys=True) + "\n")
    total = sum(p.stat().st_size for p in HERE.rglob("*") if p.is_file())
    print(f"{sum(len(v) for v in cases.values())} cases, {total / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
