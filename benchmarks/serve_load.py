"""Load on ``lorahive serve``: N concurrent ``openai`` clients over M agents on the loopback interface.

    .venv/bin/python benchmarks/serve_load.py                         # embedded SmolLM2-135M, CPU
    .venv/bin/python benchmarks/serve_load.py --base PATH --clients 16 --agents 8
    .venv/bin/python benchmarks/serve_load.py --run RUN_DIR --tick-every 4     # a run directory: serve ticks, checkpoints
    python3 benchmarks/serve_load.py --arch qwen2-0.5b --clients 16 --agents 8  # Qwen2.5-0.5B's shapes, random weights (a GPU)

Each client sends ``--requests`` completions (round-robin over the agents, greedy,
``--max-tokens`` each) and, every ``--feedback-every`` requests, feedback on its last
completion (a correction, or every other time a reward of 1: the completion itself is
taught). With ``--run`` the run directory is served as ``lorahive serve`` serves it (its
agents, checkpoints every ``--checkpoint-every`` learned events, a serve tick every
``--tick-every`` taught examples), and the decode stalls they cause are printed: the median
decode step beside the longest serve-tick unit and the longest checkpoint, each of which
holds up one decode step. Prints p50/p99 latency, tokens/s and feedback learned per second, then the same
requests served by plain ``transformers`` generation one request at a time (``Hive.generate``
of one row: ``model.generate`` with its KV cache). Bounded: ``--seconds`` stops the clients.
``--arch qwen2-0.5b`` serves a random-weight model of Qwen2.5-0.5B's shapes (24 layers, hidden
896, intermediate 4864, 14 heads, 2 KV heads) with the embedded model's tokenizer and vocabulary
instead of ``--base``; ``--no-kv-cache`` decodes without the decode batch's KV cache (every step
recomputes every row), for the before/after comparison.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import torch
import uvicorn
from transformers import AutoModelForCausalLM, Qwen2Config

from lorahive import Hive
from lorahive.base import load_base
from lorahive.config import DEFAULT_BASE
from lorahive.serve import Engine, Settings, create_app
from lorahive.serve.load import engine_for_run
from lorahive.store.lock import run_lock

PROMPTS = [
    "Ticket: my screen is black. Team:",
    "Ticket: I was charged twice this month. Team:",
    "Question: what is the capital of France? Answer:",
    "Review: the food was cold and the waiter rude. Sentiment:",
]


def qwen2_05b(vocab: int) -> Qwen2Config:
    """Qwen2.5-0.5B's shapes over ``vocab`` tokens (random weights: for speed, not answers)."""
    return Qwen2Config(
        vocab_size=vocab, hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
        num_key_value_heads=2, max_position_embeddings=32768, rope_theta=1_000_000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
    )


ARCHS = {"qwen2-0.5b": qwen2_05b}


def load_hive(args: argparse.Namespace) -> Hive:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not args.arch:
        return Hive.load(args.base, device=device)
    tok = load_base(DEFAULT_BASE, device="cpu").tokenizer  # the embedded model's tokenizer; its weights are dropped
    torch.manual_seed(0)
    with device:
        model = AutoModelForCausalLM.from_config(ARCHS[args.arch](len(tok)), dtype=torch.bfloat16 if device.type == "cuda" else torch.float32)
    return Hive(model.eval(), tok)


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))] if xs else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default=DEFAULT_BASE)
    ap.add_argument("--arch", choices=sorted(ARCHS), default=None, help="a random-weight model of these shapes instead of --base")
    ap.add_argument("--no-kv-cache", action="store_true", help="decode without the KV cache (every step recomputes every row)")
    ap.add_argument("--agents", type=int, default=4)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=4, help="requests per client")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--feedback-every", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=300.0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--plain", type=int, default=-1, help="requests replayed by plain generation one at a time (-1: all; 0: none)")
    ap.add_argument("--run", default=None, help="serve this run directory (its agents) instead of --base")
    ap.add_argument("--tick-every", type=int, default=4, help="with --run: taught examples per serve tick")
    ap.add_argument("--checkpoint-every", type=int, default=8, help="with --run: learned events per checkpoint")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    settings = Settings(max_tokens=args.max_tokens, max_batch=max(16, args.clients), tick_every=args.tick_every, checkpoint_every=args.checkpoint_every, kv_cache=not args.no_kv_cache)
    if args.run:
        with run_lock(args.run):
            engine = engine_for_run(args.run, settings)
            measure(args, engine, engine.hive, engine.agents[: args.agents])
        return
    hive = load_hive(args)
    agents = [f"agent{i}" for i in range(args.agents)]
    hive.add_agents(agents)
    measure(args, Engine(hive, None, settings), hive, agents)


def stalls(engine: Engine) -> str:
    """The median decode step beside the longest serve-tick unit and checkpoint (each holds up one step)."""
    by: dict[str, list[float]] = {}
    for kind, seconds in engine.timeline:
        by.setdefault(kind, []).append(seconds)
    step = statistics.median(by.get("step", [float("nan")]))
    tick, ckpt = by.get("tick", []), by.get("checkpoint", [])
    return (
        f"  decode step median {step * 1000:.1f} ms; serve ticks {engine.stats['serve_ticks']:.0f} in {len(tick)} units, longest unit {max(tick, default=0) * 1000:.1f} ms;"
        f" checkpoints {len(ckpt)}, longest {max(ckpt, default=0) * 1000:.1f} ms, mean {statistics.mean(ckpt) * 1000 if ckpt else 0:.1f} ms"
    )


def measure(args: argparse.Namespace, engine: Engine, hive: Hive, agents: list[str]) -> None:
    engine.start()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(engine), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{sock.getsockname()[1]}/v1", api_key="x", max_retries=0, timeout=600)
    deadline = time.time() + args.seconds
    latencies: list[float] = []
    tokens = [0]
    feedback = [0]
    lock = threading.Lock()

    def run_client(c: int) -> None:
        for r in range(args.requests):
            if time.time() > deadline:
                return
            agent, prompt = agents[(c + r) % len(agents)], PROMPTS[(c + r) % len(PROMPTS)]
            t = time.perf_counter()
            out = client.completions.create(model=agent, prompt=prompt, max_tokens=args.max_tokens)
            dt = time.perf_counter() - t
            with lock:
                latencies.append(dt)
                tokens[0] += out.usage.completion_tokens if out.usage else 0
            if args.feedback_every and (r + 1) % args.feedback_every == 0:
                body = {"correction": " hardware"} if (c + r) % 2 else {"reward": 1.0}
                client.post("/feedback", body={"completion_id": out.id, **body}, cast_to=object)
                with lock:
                    feedback[0] += 1

    t0 = time.perf_counter()
    with ThreadPoolExecutor(args.clients) as pool:
        list(pool.map(run_client, range(args.clients)))
    while engine.stats["learned"] < feedback[0] and time.time() < deadline:
        time.sleep(0.01)
    wall = time.perf_counter() - t0
    learned = engine.stats["learned"]
    server.should_exit = True
    thread.join(10)
    engine.stop()
    model = args.run or args.arch or args.base
    print(f"serve ({model}, KV cache {'off' if args.no_kv_cache else 'on'}): {len(latencies)} requests, {args.clients} clients over {args.agents} agents, {args.max_tokens} max tokens, device {hive.device}")
    print(f"  latency p50 {pct(latencies, 0.5):.3f} s, p99 {pct(latencies, 0.99):.3f} s; {tokens[0] / wall:.1f} tokens/s; "
          f"{learned / wall:.2f} feedback learned/s ({learned}); most rows in one step {engine.stats['max_batch_seen']:.0f}; wall {wall:.1f} s")
    print(stalls(engine))

    one: list[float] = []
    gen_tokens = 0
    t0 = time.perf_counter()
    if args.plain == 0:
        return
    for i in range(len(latencies) if args.plain < 0 else min(args.plain, len(latencies))):
        agent, prompt = agents[i % len(agents)], PROMPTS[i % len(PROMPTS)]
        t = time.perf_counter()
        text = hive.generate([prompt], [agent], max_new_tokens=args.max_tokens)[0]
        one.append(time.perf_counter() - t)
        gen_tokens += len(hive.tokenizer(text, add_special_tokens=False)["input_ids"])
    wall = time.perf_counter() - t0
    print(f"plain generate, one request at a time ({len(one)} requests): latency p50 {pct(one, 0.5):.3f} s, p99 {pct(one, 0.99):.3f} s; "
          f"{gen_tokens / wall:.1f} tokens/s (tokens re-counted from the text); wall {wall:.1f} s; mean {statistics.mean(one):.3f} s")


if __name__ == "__main__":
    main()
