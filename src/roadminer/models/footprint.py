"""What a built tier holds in memory: device, parameter dtype, parameter count and bytes, read from its
torch modules. The GPU planner (``roadminer.deploy.planner.plan_loaded``) books these numbers."""

from __future__ import annotations

from typing import Any

_TORCH_DTYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "float64": "fp64", "int8": "int8",
                 "uint8": "int8", "float8_e4m3fn": "fp8", "float8_e5m2": "fp8"}


def tier_footprint(tier: Any) -> dict[str, Any] | None:
    """What a built tier holds: ``device`` (``cpu``/``cuda``/``cuda:N``), ``dtype``, ``params`` and weight
    ``bytes``, read from its torch modules (or its own ``footprint()``); None when it holds none (a colour
    rule, a remote VLM server)."""
    own = getattr(tier, "footprint", None)
    if callable(own):
        return own()
    return module_footprint(*_modules_of(tier))


def _modules_of(tier: Any) -> list[Any]:
    found = []
    for holder in (getattr(tier, "engine", None), tier):
        if holder is None:
            continue
        for attr in ("head", "module", "model"):
            m = getattr(holder, attr, None)
            if m is not None and callable(getattr(m, "parameters", None)) and m not in found:
                found.append(m)
    return found[:1]


def module_footprint(*modules: Any) -> dict[str, Any] | None:
    """Device, most common parameter dtype, parameter count and bytes (parameters + buffers) of modules."""
    params = 0
    nbytes = 0
    dtypes: dict[str, int] = {}
    device = None
    for m in modules:
        try:
            weights, buffers = list(m.parameters()), list(m.buffers())
        except Exception:  # not a torch module after all
            continue
        for t in weights:
            n = int(t.numel())
            params += n
            nbytes += n * int(t.element_size())
            name = str(t.dtype).replace("torch.", "")
            dtypes[name] = dtypes.get(name, 0) + n
            device = device or str(t.device)
        for t in buffers:
            nbytes += int(t.numel()) * int(t.element_size())
            device = device or str(t.device)
    if device is None:
        return None
    dtype = max(dtypes, key=lambda k: dtypes[k]) if dtypes else "float32"
    return {"device": device, "dtype": _TORCH_DTYPES.get(dtype, dtype), "params": float(params),
            "bytes": float(nbytes)}
