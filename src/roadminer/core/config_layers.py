"""The layers of the configuration and where each value comes from.

pydantic-settings merges its sources (highest first): the command line (an ``InitSettingsSource`` of the
dotted overrides), the ``ROADMINER_*`` environment (``EnvSettingsSource``), one YAML file
(``YamlConfigSettingsSource``), the defaults. This module builds those sources for one load, and answers
"which layer set this key?" for ``roadminer config show`` and for error messages that name the file or
variable holding a bad key. It knows nothing of the settings tree itself (the class is passed in).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_settings import BaseSettings, EnvSettingsSource, InitSettingsSource, YamlConfigSettingsSource
from pydantic_settings.sources import DefaultSettingsSource

DEFAULT = "default"
CLI = "cli"

Path_ = tuple[str | int, ...]


class ConfigError(ValueError):
    """The configuration cannot be loaded; the message names each bad key and the layer that holds it."""


class YamlFileSource(YamlConfigSettingsSource):
    """pydantic-settings' YAML source that refuses a file whose top level is not a mapping and names the
    file on a YAML syntax error (the stock source would fail with a bare ``yaml`` or ``TypeError``)."""

    def _read_file(self, file_path: Any) -> dict[str, Any]:
        try:
            data = super()._read_file(file_path)
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {file_path} is not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {file_path} must hold a mapping at the top level, "
                              f"not a {type(data).__name__}")
        return data


def dotted(path: Sequence[str | int]) -> str:
    """``("cascade", "tiers", 1, "options")`` -> ``cascade.tiers[1].options``."""
    out = ""
    for seg in path:
        out += f"[{seg}]" if isinstance(seg, int) else (f".{seg}" if out else str(seg))
    return out


def _lookup(data: Any, path: Sequence[str | int]) -> tuple[bool, Any]:
    node = data
    for seg in path:
        if isinstance(seg, int):
            if not isinstance(node, list) or not -len(node) <= seg < len(node):
                return False, None
            node = node[seg]
        else:
            if not isinstance(node, dict) or seg not in node:
                return False, None
            node = node[seg]
    return True, node


class SettingsLayers:
    """The sources of one settings load, highest precedence first: CLI > environment > YAML > defaults."""

    def __init__(self, settings_cls: type[BaseSettings], config_file: str | Path | None,
                 cli: dict[str, Any] | None = None) -> None:
        self.settings_cls = settings_cls
        self.config_file = None if config_file is None else Path(config_file)
        if self.config_file is not None and not self.config_file.is_file():
            raise FileNotFoundError(f"config file not found: {self.config_file}")
        self.cli = InitSettingsSource(settings_cls, init_kwargs=dict(cli or {}))
        self.env = EnvSettingsSource(settings_cls)
        self.yaml = None if self.config_file is None else YamlFileSource(settings_cls, yaml_file=self.config_file)
        self.default = DefaultSettingsSource(settings_cls)
        self._data = [(CLI, self.cli()), ("env", self.env())]
        if self.yaml is not None:
            self._data.append((f"yaml:{self.config_file}", self.yaml()))

    @property
    def sources(self) -> tuple[Any, ...]:
        """For ``Settings(_build_sources=(layers.sources, {}))``: pydantic-settings merges them."""
        return tuple(s for s in (self.cli, self.env, self.yaml, self.default) if s is not None)

    def given(self) -> list[tuple[str, dict[str, Any]]]:
        """``(label, values)`` of each layer that holds values, highest precedence first."""
        return [(label, data) for label, data in self._data if data]

    # ------------------------------------------------------------------ provenance
    def origin(self, path: Sequence[str | int]) -> tuple[str, bool]:
        """The layer whose value is used at ``path`` and whether that layer holds the whole path (False:
        it holds a parent, the rest is defaults). Mappings merge key by key across layers; a list is
        taken whole from the highest layer that has it."""
        candidates = list(self._data)
        label = DEFAULT
        for depth in range(1, len(path) + 1):
            having = []
            for name, data in candidates:
                ok, value = _lookup(data, path[:depth])
                if ok:
                    having.append((name, data, value))
            if not having:
                return label, False
            name, data, value = having[0]
            label = name
            candidates = [(name, data)] if isinstance(value, list) else [(n, d) for n, d, _ in having]
        return self._label(label, path), True

    def label_of(self, path: Sequence[str | int]) -> str:
        """``default``, ``cli``, ``env:VAR`` or ``yaml:FILE`` for the value at ``path``."""
        label, whole = self.origin(path)
        return label if whole else DEFAULT

    def _label(self, label: str, path: Sequence[str | int]) -> str:
        if label != "env":
            return label
        var = self.env_var(path)
        return f"env:{var}" if var else "env"

    def env_var(self, path: Sequence[str | int]) -> str | None:
        """The environment variable that holds ``path`` (``ROADMINER_SERVER__PORT``, or a parent holding
        JSON such as ``ROADMINER_SERVER``)."""
        prefix = self.env.env_prefix
        delim = self.env.env_nested_delimiter or "__"
        names = [str(s) for s in path if not isinstance(s, int)]
        by_lower = {k.lower(): k for k in os.environ}
        for n in range(len(names), 0, -1):
            want = (prefix + delim.join(names[:n])).lower()
            if want in by_lower:
                return by_lower[want]
        return None

    def unknown_env_sections(self) -> list[str]:
        """``ROADMINER_X__Y`` variables whose section ``X`` is no setting (pydantic-settings ignores them;
        plain ``ROADMINER_NAME`` variables without ``__`` are left alone: other tools use the prefix)."""
        prefix = self.env.env_prefix.lower()
        delim = (self.env.env_nested_delimiter or "__").lower()
        fields = set(self.settings_cls.model_fields)
        bad = []
        for key in os.environ:
            low = key.lower()
            if low.startswith(prefix) and delim in low[len(prefix):]:
                head = low[len(prefix):].split(delim, 1)[0]
                if head not in fields:
                    bad.append(key)
        return sorted(bad)

    # ------------------------------------------------------------------ errors
    def where(self, path: Sequence[str | int]) -> str:
        """Human words for the layer holding ``path`` (or its nearest parent)."""
        label, _ = self.origin(path)
        if label == DEFAULT:
            return "defaults"
        if label == CLI:
            return "command line"
        if label.startswith("env"):
            return "environment " + label.partition(":")[2] if ":" in label else "environment"
        return label.partition(":")[2]

    def explain(self, err: ValidationError | None, extra: Sequence[str] = ()) -> str:
        """One line per problem: the layer (file, variable or command line), the dotted key, what is wrong."""
        lines = []
        for e in err.errors(include_url=False) if err is not None else ():
            loc = tuple(e["loc"])
            key = dotted(loc)
            msg = "unknown key" + self._allowed_hint(loc) if e["type"] == "extra_forbidden" else plain_message(e["msg"])
            lines.append(f"  {self.where(loc)}: {key}: {msg}")
        lines += list(extra)
        n = len(lines)
        return f"invalid configuration ({n} problem{'s' if n != 1 else ''}):\n" + "\n".join(lines)

    def _allowed_hint(self, loc: Path_) -> str:
        model = model_at(self.settings_cls, loc[:-1])
        if model is None:
            return ""
        return allowed_hint(str(loc[-1]), list(model.model_fields), dotted(loc[:-1]) or "the top level")


def plain_message(msg: str) -> str:
    """pydantic's message without its ``Value error, `` / ``Assertion failed, `` lead-in."""
    for lead in ("Value error, ", "Assertion failed, "):
        if msg.startswith(lead):
            return msg[len(lead):]
    return msg


def allowed_hint(key: str, allowed: list[str], owner: str, also: str = "") -> str:
    """``; did you mean 'port'? (server takes: host, port, ...)``."""
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{hint} ({owner} takes: {', '.join(allowed)}{also})"


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation) if get_origin(annotation) is not None else ():
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def model_at(cls: type[BaseModel], path: Sequence[str | int]) -> type[BaseModel] | None:
    """The pydantic model at ``path`` of the tree rooted at ``cls`` (list indices step into the item type)."""
    node: type[BaseModel] | None = cls
    for seg in path:
        if isinstance(seg, int):
            continue
        if node is None or seg not in node.model_fields:
            return None
        node = _inner_model(node.model_fields[seg].annotation)
    return node
