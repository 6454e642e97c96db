"""In-process VLM judge (transformers ``AutoModelForImageTextToText``, Qwen2-VL / Qwen3-VL family).

The prompt is a few-shot chat: instructions, then K exemplar images each followed by its answer, then
the query image and the question. Everything before the query is the *prefix*; its keys/values are
computed once and kept in ``state.kvcache.PrefixKVCache`` (LRU, then Redis as safetensors), so a request
only prefills its own ~70 tokens (64 visual tokens at 224x224 plus the question). Positions are the
multimodal RoPE positions of the whole sequence (``get_rope_index`` over prefix + query ids), sliced to
the query part, so the logits equal those of a full prefill.

The answer is one next-token distribution: P(yes) = softmax over the yes/no token variants
("Yes", "yes", ...), so there is no generation loop.
"""

from __future__ import annotations

import hashlib
import inspect
import time
from pathlib import Path
from typing import Any

import numpy as np
from loguru import logger
from PIL import Image

from roadminer.core.tier_options import DEFAULT_INSTRUCTIONS, DEFAULT_QUESTION
from roadminer.models.base import ImageBatch, Tier, TierOutput, clip_prob, register_tier
from roadminer.models.vlm.prefix_kv import PrefixKV, PrefixKVCache, RedisBytes, prefix_key

YES_WORDS = ("Yes", "yes", "YES", " Yes", " yes")
NO_WORDS = ("No", "no", "NO", " No", " no")
VISION = "<|vision_start|>{image}<|vision_end|>"


def answer_token_ids(tokenizer: Any, words: tuple[str, ...]) -> list[int]:
    """Ids of the words that are a single token (multi-token variants cannot be read in one step)."""
    ids: list[int] = []
    for w in words:
        enc = tokenizer.encode(w, add_special_tokens=False)
        if len(enc) == 1 and enc[0] not in ids:
            ids.append(int(enc[0]))
    return ids


def image_hash(rgb: np.ndarray) -> str:
    a = np.ascontiguousarray(rgb, dtype=np.uint8)
    return hashlib.sha256(repr(a.shape).encode() + a.tobytes()).hexdigest()


def _dtype(name: str) -> Any:
    import torch

    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if name not in table:
        raise ValueError(f"unknown dtype {name!r}; use one of {sorted(table)}")
    return table[name]


@register_tier("vlm_hf")
class HFVLMTier(Tier):
    version = "vlm-hf-1"

    def __init__(self, name: str = "vlm", model: str = "Qwen/Qwen2-VL-2B-Instruct",
                 revision: str | None = None, device: str = "cpu", dtype: str = "auto",
                 instructions: str = DEFAULT_INSTRUCTIONS,
                 question: str = DEFAULT_QUESTION, exemplars: list[dict[str, Any]] | None = None,
                 image_size: int = 224, min_pixels: int | None = None, max_pixels: int | None = None,
                 batch_size: int = 8, prefix_cache: bool = True, redis_url: str | None = None,
                 key_prefix: str = "roadminer:", lru_size: int = 4, kv_ttl_s: float | None = None,
                 attn_implementation: str | None = "sdpa", model_obj: Any = None, processor_obj: Any = None,
                 kv_backend: Any = None) -> None:
        import torch

        self.name = name
        self.model_id = model
        self.revision = revision
        self.device = torch.device(device)
        self.image_size = image_size
        self.batch_size = max(1, batch_size)
        self.instructions, self.question = instructions, question
        self.use_prefix_cache = prefix_cache
        if dtype == "auto":
            dtype = "bfloat16" if self.device.type == "cuda" else "float32"
        self.torch_dtype = _dtype(dtype)
        self.dtype_name = dtype
        if processor_obj is None:
            from transformers import AutoProcessor

            kw = {k: v for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v is not None}
            processor_obj = AutoProcessor.from_pretrained(model, revision=revision, **kw)
        self.processor = processor_obj
        if model_obj is None:
            from transformers import AutoModelForImageTextToText

            kw = {"attn_implementation": attn_implementation} if attn_implementation else {}
            model_obj = AutoModelForImageTextToText.from_pretrained(model, revision=revision, dtype=self.torch_dtype,
                                                                    use_safetensors=True, **kw)  # never .bin pickles
        self.model = model_obj.to(self.device, self.torch_dtype).eval()
        # transformers 5 renamed ``past_key_values`` to ``cache``; accept both.
        params = inspect.signature(self.model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        tok = self.processor.tokenizer
        self.yes_ids = answer_token_ids(tok, YES_WORDS)
        self.no_ids = answer_token_ids(tok, NO_WORDS)
        if not self.yes_ids or not self.no_ids:
            raise ValueError("the tokenizer has no single-token Yes/No answers")
        self.image_text = VISION.format(image=getattr(self.processor, "image_token", "<|image_pad|>"))
        self.exemplars = [self._load_exemplar(e) for e in (exemplars or [])]
        backend = kv_backend
        if backend is None and redis_url:
            backend = RedisBytes(redis_url, key_prefix=key_prefix)
        self.kv_cache = PrefixKVCache(backend, lru_size=lru_size, ttl_s=kv_ttl_s)
        self._prepare_prefix()

    # -- prompt ------------------------------------------------------------------------------------
    def _load_exemplar(self, e: dict[str, Any]) -> tuple[np.ndarray, str]:
        img = e["image"]
        if isinstance(img, (str, Path)):
            with Image.open(img) as im:
                img = np.asarray(im.convert("RGB"))
        answer = str(e["answer"]).strip().capitalize()
        if answer not in ("Yes", "No"):
            raise ValueError(f"exemplar answer must be Yes or No, got {e['answer']!r}")
        return self._resize(np.asarray(img, dtype=np.uint8)), answer

    def _resize(self, rgb: np.ndarray) -> np.ndarray:
        if rgb.shape[0] == self.image_size and rgb.shape[1] == self.image_size:
            return rgb
        im = Image.fromarray(rgb).resize((self.image_size, self.image_size), Image.BILINEAR)
        return np.array(im)

    def _turn(self, role: str, text: str) -> str:
        return f"<|im_start|>{role}\n{text}<|im_end|>\n"

    @property
    def prefix_text(self) -> str:
        parts = [self._turn("system", self.instructions)]
        for _, answer in self.exemplars:
            parts.append(self._turn("user", self.image_text + self.question))
            parts.append(self._turn("assistant", answer))
        return "".join(parts)

    @property
    def query_text(self) -> str:
        return self._turn("user", self.image_text + self.question) + "<|im_start|>assistant\n"

    def _prepare_prefix(self) -> None:
        images = [img for img, _ in self.exemplars] or None
        self.prefix_inputs = self.processor(text=[self.prefix_text], images=images, return_tensors="pt")
        ids = self.prefix_inputs["input_ids"][0].tolist()
        self.prefix_len = len(ids)
        self.kv_key = prefix_key(self.model_id, self.revision, self.dtype_name, ids,
                                 [image_hash(img) for img, _ in self.exemplars],
                                 extra={"image_size": self.image_size, "class": type(self.model).__name__})

    # -- prefix KV ---------------------------------------------------------------------------------
    def compute_prefix_kv(self) -> PrefixKV:
        import torch

        inputs = {k: v.to(self.device) for k, v in self.prefix_inputs.items()}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.torch_dtype)
        with torch.inference_mode():
            out = self.model(**inputs, use_cache=True, logits_to_keep=1)
        cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
        return PrefixKV.from_cache(cache, {"model": self.model_id, "dtype": self.dtype_name,
                                           "prefix_len": str(self.prefix_len)})

    def prefix_kv(self) -> PrefixKV:
        return self.kv_cache.get_or_compute(self.kv_key, self.compute_prefix_kv, self.device)

    def warmup(self) -> None:
        t0 = time.perf_counter()
        if self.use_prefix_cache:
            self.prefix_kv()
        self.predict(ImageBatch(rgb=[np.zeros((self.image_size, self.image_size, 3), np.uint8)]))
        logger.info("vlm {} warm in {:.1f}s (prefix {} tokens, KV from {})", self.name,
                    time.perf_counter() - t0, self.prefix_len, self.kv_cache.stats.last_source or "-")

    # -- inference ---------------------------------------------------------------------------------
    def next_token_logits(self, rgb: list[np.ndarray], use_prefix_cache: bool | None = None) -> Any:
        """Logits [N, vocab] (float32, on CPU) of the token after the query."""
        import torch

        use_cache = self.use_prefix_cache if use_prefix_cache is None else use_prefix_cache
        images = [self._resize(np.asarray(x, dtype=np.uint8)) for x in rgb]
        n = len(images)
        with torch.inference_mode():
            if use_cache:
                kv = self.prefix_kv()
                q = self.processor(text=[self.query_text] * n, images=images, return_tensors="pt")
                position_ids = self._query_positions(q, n)
                out = self.model(input_ids=q["input_ids"].to(self.device),
                                 pixel_values=q["pixel_values"].to(self.device, self.torch_dtype),
                                 image_grid_thw=q["image_grid_thw"].to(self.device),
                                 mm_token_type_ids=q["mm_token_type_ids"].to(self.device),
                                 position_ids=position_ids.to(self.device),
                                 use_cache=True, logits_to_keep=1,
                                 **{self._cache_kw: kv.as_cache(n, self.model.config)})
            else:
                ex = [img for img, _ in self.exemplars]
                flat = [im for q_img in images for im in (*ex, q_img)]
                full = self.processor(text=[self.prefix_text + self.query_text] * n, images=flat,
                                      return_tensors="pt")
                inputs = {k: v.to(self.device) for k, v in full.items()}
                inputs["pixel_values"] = inputs["pixel_values"].to(self.torch_dtype)
                out = self.model(**inputs, use_cache=False, logits_to_keep=1)
        return out.logits[:, -1, :].float().cpu()

    def _query_positions(self, q: Any, n: int) -> Any:
        """M-RoPE positions of the query tokens as they sit after the prefix."""
        import torch

        p = self.prefix_inputs
        ids = torch.cat([p["input_ids"].expand(n, -1), q["input_ids"]], dim=1)
        types = torch.cat([p["mm_token_type_ids"].expand(n, -1), q["mm_token_type_ids"]], dim=1)
        grids = []
        pg = p.get("image_grid_thw")
        for i in range(n):
            if pg is not None:
                grids.append(pg)
            grids.append(q["image_grid_thw"][i : i + 1])
        pos, _ = self.model.model.get_rope_index(ids, mm_token_type_ids=types,
                                                 image_grid_thw=torch.cat(grids))
        return pos[:, :, self.prefix_len :]

    def probs_from_logits(self, logits: Any) -> np.ndarray:
        import torch

        logp = torch.log_softmax(logits.float(), dim=-1)
        yes = torch.logsumexp(logp[:, self.yes_ids], dim=-1)
        no = torch.logsumexp(logp[:, self.no_ids], dim=-1)
        return torch.sigmoid(yes - no).numpy().astype(np.float64)

    def predict(self, batch: ImageBatch) -> TierOutput:
        out = np.empty(len(batch))
        for s in range(0, len(batch), self.batch_size):
            chunk = batch.rgb[s : s + self.batch_size]
            out[s : s + len(chunk)] = self.probs_from_logits(self.next_token_logits(chunk))
        return TierOutput(prob=clip_prob(out), extras={"kv_source": self.kv_cache.stats.last_source})

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(model=self.model_id, revision=self.revision, dtype=self.dtype_name,
                 device=str(self.device), exemplars=len(self.exemplars), prefix_tokens=self.prefix_len,
                 prefix_cache=self.use_prefix_cache)
        return d
