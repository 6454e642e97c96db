"""Shipped model files are pinned by sha256 in code (``roadminer.models.shipped``): the table matches the files,
and every loader refuses a modified copy in the shipped folder with a clear error."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from roadminer.models import shipped


def test_every_shipped_model_file_is_pinned_and_matches() -> None:
    """A retrained model fails here until its new sha256 is written into the table on purpose."""
    on_disk = {p.name for p in shipped.SHIPPED_DIR.iterdir() if p.is_file() and shipped.is_loadable(p.name)}
    assert on_disk == set(shipped.SHA256), "assets/models and roadminer.models.shipped.SHA256 disagree"
    for name, pinned in shipped.SHA256.items():
        actual = hashlib.sha256((shipped.SHIPPED_DIR / name).read_bytes()).hexdigest()
        assert actual == pinned, f"{name}: sha256 {actual}, pinned {pinned}"
    assert not list(shipped.SHIPPED_DIR.glob("*.pt")) and not list(shipped.SHIPPED_DIR.glob("*.pth"))


def _load_classifier(path: Path) -> Any:
    from roadminer.models.classifier import load_classifier

    return load_classifier(path)


def _load_yolo(path: Path) -> Any:
    if importlib.util.find_spec("ultralytics") is None:  # found without importing (that patches PIL.Image.open)
        pytest.skip("ultralytics is in the train extra")
    from roadminer.models.detector import YoloTier

    return YoloTier(weights=str(path))


def _load_colour(path: Path) -> Any:
    from roadminer.models.colour import ColourCueTier

    return ColourCueTier(coefs_path=path)


def _load_consensus(path: Path) -> Any:
    from roadminer.cascade.consensus import ConsensusParams

    return ConsensusParams.load(path)


LOADERS: dict[str, Callable[[Path], Any]] = {
    "roadwork_classifier.safetensors": _load_classifier,
    "roadwork_classifier_lite2.safetensors": _load_classifier,
    "roadwork_yolo.safetensors": _load_yolo,
    "colour_cue.json": _load_colour,
    "cascade_consensus.json": _load_consensus,
}


def _tamper(data: bytes, name: str) -> bytes:
    """A change the file format itself cannot notice: the last tensor byte, or one digit in the JSON."""
    if name.endswith(".json"):
        text = data.decode()
        i = max(text.rfind(d) for d in "123456789")
        return (text[:i] + ("1" if text[i] != "1" else "2") + text[i + 1 :]).encode()
    return data[:-1] + bytes([data[-1] ^ 0x01])


def test_loaders_cover_every_pinned_file() -> None:
    assert set(LOADERS) == set(shipped.SHA256)


@pytest.mark.parametrize("name", sorted(LOADERS))
def test_tampered_copy_in_the_shipped_folder_is_refused(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    data = (shipped.SHIPPED_DIR / name).read_bytes()
    monkeypatch.setattr(shipped, "SHIPPED_DIR", folder)
    (folder / name).write_bytes(data)
    LOADERS[name](folder / name)  # the genuine bytes load from the (relocated) shipped folder

    bad = _tamper(data, name)
    if name.endswith(".json"):
        json.loads(bad)  # still valid JSON: only the pin can tell
    (folder / name).write_bytes(bad)
    with pytest.raises(shipped.ShippedFileError, match=rf"refusing to load assets/models/{name}: its sha256 is"):
        LOADERS[name](folder / name)

    # the same tampered bytes outside the shipped folder are an operator's own file: not pinned, loaded
    outside = tmp_path / "mine" / name
    outside.parent.mkdir()
    outside.write_bytes(bad)
    LOADERS[name](outside)


def test_unpinned_file_in_the_shipped_folder_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copyfile(shipped.SHIPPED_DIR / "roadwork_classifier.safetensors", folder / "extra_classifier.safetensors")
    monkeypatch.setattr(shipped, "SHIPPED_DIR", folder)
    with pytest.raises(shipped.ShippedFileError, match="not pinned"):
        _load_classifier(folder / "extra_classifier.safetensors")


def test_safetensors_metadata_parser_refuses_garbage() -> None:
    meta = shipped.safetensors_metadata((shipped.SHIPPED_DIR / "roadwork_classifier.safetensors").read_bytes())
    assert meta["format"] == "roadminer-classifier-1"
    for bad in (b"", b"\x01", (10**9).to_bytes(8, "little") + b"{}", (2).to_bytes(8, "little") + b"[]",
                (4).to_bytes(8, "little") + b"\xff\xfe{}"):
        with pytest.raises(ValueError, match="safetensors"):
            shipped.safetensors_metadata(bad)
