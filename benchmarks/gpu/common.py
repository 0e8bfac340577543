"""Shared pieces of the GPU benchmarks: model configs, a word tokenizer, timing, PEFT export.

Models are real architectures with random bf16 weights built from their configs on the GPU
(no downloads). Timings use CUDA events after warm-ups and report medians.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast, Qwen2Config

from lorahive import Hive
from lorahive.config import DEFAULT_TARGETS

WORDS = 2000  # the word tokenizer's vocabulary: w0 … w1999, one token each


def qwen_05b() -> Qwen2Config:
    """Qwen2.5-0.5B's architecture."""
    return Qwen2Config(
        vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
        num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
        rope_theta=1_000_000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
    )


def llama_8b() -> LlamaConfig:
    """Llama-3.1-8B's architecture (plain RoPE; the llama3 long-context scaling does not change cost)."""
    return LlamaConfig(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
        rope_theta=500_000.0, rms_norm_eps=1e-5, tie_word_embeddings=False,
    )


def smollm2_135m() -> LlamaConfig:
    """SmolLM2-135M's architecture (the embedded model)."""
    return LlamaConfig(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
        rope_theta=100_000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
    )


ARCHS = {"qwen2.5-0.5b": qwen_05b, "llama-3.1-8b": llama_8b, "smollm2-135m": smollm2_135m}


def build(arch: str, seed: int = 0) -> torch.nn.Module:
    """Random-weight bf16 model of ``arch``, initialised directly on the GPU."""
    torch.manual_seed(seed)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(ARCHS[arch](), dtype=torch.bfloat16)
    return model.eval()


def twin_of(model: torch.nn.Module, arch: str) -> torch.nn.Module:
    """A second model with the same weights (PEFT injects in place, so it gets its own copy)."""
    twin = build(arch, seed=1)
    twin.load_state_dict(model.state_dict())
    return twin


def word_tokenizer() -> PreTrainedTokenizerFast:
    """Whitespace word tokenizer: ``"w17 w3"`` is exactly two tokens (ids 19 and 5)."""
    vocab = {"<pad>": 0, "<eos>": 1} | {f"w{i}": i + 2 for i in range(WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")


def words(n: int, gen: torch.Generator) -> str:
    return " ".join(f"w{int(i)}" for i in torch.randint(0, WORDS, (n,), generator=gen))


def random_ids(rows: int, length: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(2, WORDS + 2, (rows, length), generator=gen).cuda()  # (rows, length)


def randomize_b(hive: Hive, scale: float = 0.02, seed: int = 1) -> None:
    """Give every B a random value so that every level contributes."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    with torch.no_grad():
        for lv in hive.levels:
            for bank in hive.core.banks(lv.name):
                bank.B.copy_(torch.randn(bank.B.shape, generator=gen, device="cuda") * scale)
    hive.core.rescan()


def median_ms(fn: Callable[[], object], warmup: int = 2, reps: int = 7) -> float:
    """Median CUDA-event time of ``fn`` in milliseconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def emit(**row: object) -> None:
    """Print one measured figure at once and append it to ``$OUT/results.jsonl``."""
    print("  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
    out = os.environ.get("OUT")
    if out:
        with open(os.path.join(out, "results.jsonl"), "a") as f:
            f.write(json.dumps(row | {"time": time.time()}) + "\n")


def agent_view(hive: Hive, path: str, agent: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(R, in)`` and ``(out, R)`` with Σ_l c_l B_l A_l = B·A for ``agent`` at module ``path``."""
    layer = hive.core.layers[path]
    a_parts, b_parts = [], []
    for lv in hive.levels:
        if lv.name not in layer.banks:
            continue
        bank = layer.banks[lv.name]
        slot = hive.core.slot_of(lv.name, agent)
        a_parts.append(bank.A[slot])
        b_parts.append(bank.B[slot] * (hive.core.mix[lv.name] * lv.scale))
    return torch.cat(a_parts).detach(), torch.cat(b_parts, dim=1).detach()


def export_agent(target: torch.nn.Module, hive: Hive, agent: str, name: str) -> PeftModel:
    """Add ``agent``'s view of the hive (all levels) to ``target`` as one exact PEFT LoRA adapter."""
    rank = sum(lv.rank for lv in hive.levels)
    cfg = LoraConfig(r=rank, lora_alpha=rank, target_modules=list(DEFAULT_TARGETS), lora_dropout=0.0)
    if isinstance(target, PeftModel):
        target.add_adapter(name, cfg)
        peft = target
    else:
        peft = get_peft_model(target, cfg, adapter_name=name)  # type: ignore[arg-type]
    inner = peft.base_model.model
    with torch.no_grad():
        for path in hive.core.layers:
            a, b = agent_view(hive, path, agent)
            mod = inner.get_submodule(path)
            mod.lora_A[name].weight.copy_(a)
            mod.lora_B[name].weight.copy_(b)
    peft.set_adapter(name)
    return peft


def unwrap(peft: PeftModel) -> torch.nn.Module:
    """The model with LoRA layers injected, as ``answer_nll`` and ``generate`` want it."""
    return peft.base_model.model
