"""Random-weight Qwen2-VL models and a locally built processor, for tests and benchmarks offline.

No VLM weights can be downloaded here, so the in-process VLM backend is exercised on models built from a
config: ``tiny`` for unit tests (CPU, milliseconds) and ``2b`` with Qwen2-VL-2B's shapes for timing.
The processor is a real ``Qwen2VLProcessor`` saved to disk and loaded back with ``AutoProcessor`` (the
same path a downloaded model takes), with a small byte-level BPE vocabulary that holds the special
tokens the chat format needs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>"]
_CORPUS = ("system user assistant Yes No yes no YES NO Is there road work or roadwork in this image? "
           "Answer Yes or No. You inspect street photos for road works: cones, barriers, signs, workers.")

SIZES: dict[str, dict[str, Any]] = {
    "tiny": {
        "text": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2),
        "vision": dict(depth=1, embed_dim=32, num_heads=2, mlp_ratio=2),
        "vocab_size": None,  # = tokenizer size
    },
    # Qwen2-VL-2B-Instruct shapes (config.json of the release), random weights.
    "2b": {
        "text": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                     num_key_value_heads=2),
        "vision": dict(depth=32, embed_dim=1280, num_heads=16, mlp_ratio=4),
        "vocab_size": 151936,
    },
}


def build_local_processor(path: str | Path, min_pixels: int = 56 * 56, max_pixels: int = 224 * 224) -> Path:
    """Write a Qwen2-VL processor (BPE tokenizer + image/video processors) to ``path``; returns it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2VLImageProcessor, Qwen2VLProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([_CORPUS] * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    image_proc = Qwen2VLImageProcessor(min_pixels=min_pixels, max_pixels=max_pixels, patch_size=14,
                                       merge_size=2, temporal_patch_size=2)
    proc = Qwen2VLProcessor(image_processor=image_proc, tokenizer=fast,
                            video_processor=Qwen2VLVideoProcessor())
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    proc.save_pretrained(path)
    return path


def random_qwen2vl(processor: Any, size: str = "tiny", seed: int = 0, dtype: Any = None,
                   device: str = "cpu") -> Any:
    """A ``Qwen2VLForConditionalGeneration`` with random weights and ``size``'s shapes, in eval mode."""
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    spec = SIZES[size]
    tk = processor.tokenizer
    text = dict(spec["text"], vocab_size=spec["vocab_size"] or len(tk), max_position_embeddings=32768,
                rope_scaling={"type": "mrope", "mrope_section": _mrope_section(spec["text"])})
    vision = dict(spec["vision"], hidden_size=spec["text"]["hidden_size"], patch_size=14,
                  spatial_merge_size=2, in_channels=3, temporal_patch_size=2)
    ids = {n: tk.convert_tokens_to_ids(t) for n, t in (("image_token_id", "<|image_pad|>"),
                                                        ("video_token_id", "<|video_pad|>"),
                                                        ("vision_start_token_id", "<|vision_start|>"),
                                                        ("vision_end_token_id", "<|vision_end|>"))}
    cfg = Qwen2VLConfig(text_config=text, vision_config=vision, bos_token_id=None,
                        eos_token_id=tk.convert_tokens_to_ids("<|im_end|>"), **ids)
    cfg.text_config.bos_token_id = None
    cfg.text_config.eos_token_id = cfg.eos_token_id
    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen2VLForConditionalGeneration(cfg)
    if dtype is not None:
        model = model.to(dtype)
    return model.eval()


def _mrope_section(text: dict[str, Any]) -> list[int]:
    half = text["hidden_size"] // text["num_attention_heads"] // 2
    t = half // 4
    h = (half - t) // 2
    return [t, h, half - t - h]
