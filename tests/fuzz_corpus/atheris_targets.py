"""Coverage-guided fuzzing (atheris/libFuzzer) of the image decoder and the SN72 header parser.

Run by tests/integration/test_fuzz_atheris.py in a subprocess (libFuzzer exits the process when done):
``python tests/fuzz_corpus/atheris_targets.py decode -runs=5000 CORPUS_DIR``. A crash (any exception
other than the defined refusals) makes libFuzzer exit non-zero and write the input as ``crash-*``.
"""

from __future__ import annotations

import sys

import atheris
import numpy  # noqa: F401 - imported first so only the project and Pillow get instrumented
import pydantic  # noqa: F401

with atheris.instrument_imports(include=["roadminer", "PIL"]):
    from roadminer.imaging.decode import ImageDecodeError, ImagePolicy, decode_rgb
    from roadminer.protocol import sn72

POLICY = ImagePolicy(max_encoded_bytes=256 * 1024, max_pixels=1024 * 1024, max_side=4096, max_work_side=512)
HEADER_NAMES = [
    "timeout", "computed_body_hash", "total_size",
    *(sn72.DENDRITE_PREFIX + f for f in ("hotkey", "nonce", "uuid", "signature", "version", "ip", "port")),
    *(sn72.AXON_PREFIX + f for f in ("hotkey", "ip", "port", "version")),
]  # fmt: skip


def decode(data: bytes) -> None:
    try:
        arr = decode_rgb(data, POLICY)
    except ImageDecodeError:
        return
    assert arr.ndim == 3 and arr.shape[2] == 3 and arr.dtype.name == "uint8"


def headers(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    hdrs = {}
    for _ in range(fdp.ConsumeIntInRange(0, 8)):
        name = HEADER_NAMES[fdp.ConsumeIntInRange(0, len(HEADER_NAMES) - 1)]
        raw = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 40))
        hdrs[name] = raw.decode("utf-8", "surrogateescape")  # what aiohttp hands over
    try:
        sn72.parse_headers(hdrs)
    except sn72.SynapseError as e:
        assert e.status == 400


if __name__ == "__main__":
    target = {"decode": decode, "headers": headers}[sys.argv.pop(1)]
    atheris.Setup(sys.argv, target)
    atheris.Fuzz()
