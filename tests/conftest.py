"""Shared fixtures: a tiny random Llama and a byte-level tokenizer built in the test."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from lorahive import Hive, LevelSpec, StackSpec

CORPUS = [
    "The capital of France is Paris.",
    "Sports: the team won the match. World: the summit ended.",
    "Question: what colour is the sky? Answer: blue",
    "positive negative neutral great terrible fine",
] * 4


def make_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<pad>", "<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")


def make_model(vocab: int, seed: int = 0, init: float = 0.3, positions: int = 128) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=positions,
        initializer_range=init,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=1,
    )
    return LlamaForCausalLM(cfg).eval()


def small_stack() -> StackSpec:
    """The five-level shape of the default stack, with small ranks."""
    return StackSpec(
        levels=(
            LevelSpec(name="foundation", rank=4, alpha=4, scope="shared", inertia=0.99, lr=1e-2, trainable=False),
            LevelSpec(name="domain", rank=4, alpha=4, scope="shared", inertia=0.9, lr=1e-2),
            LevelSpec(name="swarm", rank=4, alpha=4, scope="shared", inertia=0.7, lr=1e-2),
            LevelSpec(name="agent", rank=2, alpha=4, scope="agent", inertia=0.5, lr=2e-2),
            LevelSpec(name="context", rank=2, alpha=4, scope="task", inertia=0.1, lr=2e-2),
        )
    )


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small ops on a shared 2-core machine: a second torch thread only spins (≈ 10× slower here). Use with ``pytestmark``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerFast:
    return make_tokenizer()


@pytest.fixture
def tiny_model(tokenizer):
    return make_model(len(tokenizer))


@pytest.fixture
def hive(tokenizer) -> Hive:
    h = Hive(make_model(len(tokenizer)), tokenizer, small_stack(), seed=0)
    h.add_agents(["ann", "bob", "cyd"])
    return h


def randomize_b(hive: Hive, seed: int = 1, scale: float = 0.05) -> None:
    """Give every B a random value, so levels contribute (B = 0 at init adds nothing)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for lv in hive.levels:
            for bank in hive.core.banks(lv.name):
                bank.B.copy_(torch.randn(bank.B.shape, generator=gen) * scale)
    hive.core.rescan()  # written from outside the core's primitives: let it find the non-zero slots


@pytest.fixture(scope="session")
def base_dir(tmp_path_factory):
    """The tiny random Llama and its tokenizer saved as a local model directory (read-only)."""
    from tiny_runs import save_base

    return save_base(tmp_path_factory.mktemp("tiny-base"))
