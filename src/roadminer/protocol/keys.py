"""sr25519 hotkeys: signing, verification and wallet loading (bittensor 11 ``Wallet``).

``HotkeySigner`` satisfies bittensor 11's ``Signer`` protocol (``ss58_address``, ``public_key``,
``crypto_type``, ``sign``), so it can be handed to ``bittensor.http_auth.sign`` directly. Everything here
is torch-free and imports only the small ``bittensor_core`` key binding at module level.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bittensor_core as _core
from loguru import logger

CRYPTO_SR25519: int = _core.CRYPTO_SR25519


def _as_bytes(message: bytes | str) -> bytes:
    return message.encode("utf-8") if isinstance(message, str) else bytes(message)


def _sig_bytes(signature: bytes | str) -> bytes:
    if isinstance(signature, (bytes, bytearray)):
        return bytes(signature)
    return bytes.fromhex(signature.removeprefix("0x"))


class HotkeySigner:
    """A hotkey that can sign. Built from a keypair (``Wallet.hotkey``), a dev URI or a mnemonic."""

    def __init__(self, keypair: Any) -> None:
        if not getattr(keypair, "ss58_address", None):
            raise ValueError("keypair has no ss58 address")
        self._kp = keypair

    @classmethod
    def from_uri(cls, uri: str) -> HotkeySigner:
        """Dev keys such as ``//Alice`` (local chains and tests only)."""
        return cls(_core.Keypair.create_from_uri(uri))

    @classmethod
    def from_mnemonic(cls, mnemonic: str) -> HotkeySigner:
        return cls(_core.Keypair.create_from_mnemonic(mnemonic, CRYPTO_SR25519))

    @classmethod
    def from_seed(cls, seed: bytes | str) -> HotkeySigner:
        raw = _sig_bytes(seed)
        return cls(_core.Keypair.create_from_seed(raw))

    @classmethod
    def generate(cls) -> HotkeySigner:
        return cls.from_mnemonic(_core.Keypair.generate_mnemonic(12))

    @classmethod
    def from_wallet(cls, wallet: Any) -> HotkeySigner:
        return cls(wallet.hotkey)

    @property
    def keypair(self) -> Any:
        return self._kp

    @property
    def ss58_address(self) -> str:
        return str(self._kp.ss58_address)

    @property
    def public_key(self) -> bytes:
        return bytes(self._kp.public_key)

    @property
    def crypto_type(self) -> int:
        return int(self._kp.crypto_type)

    def sign(self, payload: bytes | str) -> bytes:
        return bytes(self._kp.sign(_as_bytes(payload)))

    def sign_hex(self, message: bytes | str) -> str:
        """``0x``-prefixed hex signature, the form SN72 headers carry."""
        return "0x" + self.sign(message).hex()

    def __repr__(self) -> str:
        return f"HotkeySigner({self.ss58_address})"


def verify_signature(
    message: bytes | str, signature: bytes | str, ss58_address: str, crypto_type: int = CRYPTO_SR25519
) -> bool:
    """True when ``signature`` (bytes or ``0x`` hex) over ``message`` is valid for ``ss58_address``.

    Never raises: malformed addresses or signatures verify as False.
    """
    try:
        return bool(_core.verify(_as_bytes(message), _sig_bytes(signature), ss58_address, crypto_type))
    except (ValueError, TypeError, OverflowError):
        return False


def is_valid_ss58(address: str) -> bool:
    try:
        _core.ss58_decode(address)
        return True
    except Exception:  # the binding raises its own error types for bad input
        return False


def ss58_from_uri(uri: str) -> str:
    return str(_core.Keypair.create_from_uri(uri).ss58_address)


@dataclass(frozen=True)
class WalletRef:
    path: str
    name: str
    hotkey: str

    def hotkey_file(self) -> Path:
        return Path(self.path).expanduser() / self.name / "hotkeys" / self.hotkey


def load_wallet(path: str, name: str, hotkey: str, create_if_missing: bool = True) -> Any:
    """Open ``path/name/hotkeys/hotkey`` with bittensor 11's ``Wallet``.

    When the hotkey file is missing and ``create_if_missing`` is set, a new unencrypted hotkey is
    created (the miner only ever needs the hotkey; coldkeys stay with the operator's tools).
    """
    from bittensor.wallet import Wallet  # imports the chain SDK: keep it out of module import

    ref = WalletRef(path, name, hotkey)
    wallet = Wallet(name=name, hotkey=hotkey, path=str(Path(path).expanduser()))
    if not ref.hotkey_file().is_file():
        if not create_if_missing:
            raise FileNotFoundError(
                f"hotkey file {ref.hotkey_file()} not found "
                "(create it with btcli, or set wallet.create_if_missing)"
            )
        wallet.create_new_hotkey(
            use_password=False, overwrite=False, suppress=True, on_mnemonic=lambda _m: None
        )
        logger.warning(
            "created new hotkey {} at {} (unencrypted, for local use)",
            wallet.hotkey.ss58_address,
            ref.hotkey_file(),
        )
    return wallet


def read_hotkey_file(ref: WalletRef) -> HotkeySigner | None:
    """The hotkey of an existing unencrypted keyfile (bittensor's JSON format), read through the small
    ``bittensor_core`` binding; None when the file is missing or encrypted (then the SDK's ``Wallet``
    opens it, with its password handling)."""
    path = ref.hotkey_file()
    if not path.is_file():
        return None
    data = path.read_bytes()
    if _core.keyfile_data_is_encrypted(data):
        return None
    return HotkeySigner(_core.deserialize_keypair_from_keyfile_data(data))


def load_signer(path: str, name: str, hotkey: str, create_if_missing: bool = True) -> HotkeySigner:
    """The wallet's hotkey as a signer. ``hotkey`` may also be a dev URI such as ``//Alice``.

    An existing unencrypted hotkey is read without the bittensor SDK (an SN72 miner never imports it);
    creating one, or opening an encrypted one, goes through the SDK's ``Wallet``."""
    if hotkey.startswith("//"):
        return HotkeySigner.from_uri(hotkey)
    signer = read_hotkey_file(WalletRef(path, name, hotkey))
    if signer is not None:
        return signer
    return HotkeySigner.from_wallet(load_wallet(path, name, hotkey, create_if_missing))
