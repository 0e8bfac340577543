"""``lorahive serve``: an OpenAI-compatible HTTP service over a run directory (docs/serving.md)."""

from __future__ import annotations

import signal
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from lorahive.cli.run_cmd import console, fail, os_error
from lorahive.config import ConfigError
from lorahive.observe.ledger import LedgerError
from lorahive.runtime.rundir import RunDirError
from lorahive.store.checkpoint import CheckpointError
from lorahive.store.lock import RunLockedError, run_lock


def _stop_cleanly(sig: int, frame: FrameType | None) -> None:
    """SIGTERM, once uvicorn has shut down and raised it again: unwind, so the engine writes its last checkpoint."""
    raise SystemExit(0)


def serve(
    run_dir: Annotated[Path, typer.Argument(help="run directory to serve (its config, base model and last checkpoint)")],
    host: Annotated[str, typer.Option("--host", help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="port to listen on")] = 8000,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=1, help="the most tokens one request may ask for")] = 256,
    max_batch: Annotated[int, typer.Option("--max-batch", min=1, help="rows decoded together")] = 16,
    feedback_steps: Annotated[int, typer.Option("--feedback-steps", min=1, help="learning steps per taught example")] = 1,
    reward_threshold: Annotated[float, typer.Option("--reward-threshold", help="a reward at least this, without a correction, teaches the completion itself")] = 0.5,
    tick_every: Annotated[int, typer.Option("--tick-every", min=0, help="taught examples per serve tick (swarm proposals); 0: none")] = 16,
    checkpoint_every: Annotated[int, typer.Option("--checkpoint-every", min=1, help="learned feedback events between two checkpoints")] = 32,
    checkpoint_seconds: Annotated[float, typer.Option("--checkpoint-seconds", min=0.01, help="the longest a learned event waits for a checkpoint")] = 60.0,
    no_kv_cache: Annotated[bool, typer.Option("--no-kv-cache", help="decode without the KV cache: every step recomputes every row")] = False,
    merge_shared: Annotated[bool, typer.Option("--merge-shared", help="decode with the shared levels folded into the weights: faster, rounded once in bf16 (docs/performance.md)")] = False,
    log_json: Annotated[bool, typer.Option("--log-json", help="one JSON line on stderr per completion, learned feedback and error (docs/serving.md)")] = False,
) -> None:
    """Serve a run's agents over an OpenAI-compatible API; feedback becomes learning, checkpointed and replayed after a crash."""
    import uvicorn

    from lorahive.serve import Settings, create_app
    from lorahive.serve.keys import KeyError_, KeyStore
    from lorahive.serve.load import engine_for_run

    if not run_dir.is_dir():
        fail(f"{run_dir} is not a run directory")
        return
    if log_json:
        from lorahive.serve.logs import use_json_logs

        use_json_logs()
    settings = Settings(
        max_tokens=max_tokens, default_max_tokens=min(16, max_tokens), max_batch=max_batch, feedback_steps=feedback_steps,
        reward_threshold=reward_threshold, tick_every=tick_every, checkpoint_every=checkpoint_every, checkpoint_seconds=checkpoint_seconds,
        kv_cache=not no_kv_cache, merge_shared=merge_shared,
    )
    try:
        with run_lock(run_dir):
            try:
                engine = engine_for_run(run_dir, settings).start()
            except (RunDirError, ConfigError, CheckpointError, LedgerError) as e:
                fail(str(e))
                return
            try:
                keys = KeyStore(run_dir)
            except KeyError_ as e:
                engine.stop()
                fail(str(e))
                return
            try:
                if not keys.enabled:
                    console.print(f"[yellow]warning:[/yellow] {run_dir} has no API keys: every client may use every agent (add one with `lorahive keys add {run_dir} --admin`)")
                console.print(f"serving {len(engine.agents)} agents of {run_dir} on http://{host}:{port}/v1 ({', '.join(engine.agents)})")
                signal.signal(signal.SIGTERM, _stop_cleanly)
                uvicorn.run(create_app(engine, keys), host=host, port=port, log_level="info")
            finally:
                engine.stop()
    except RunLockedError as e:
        fail(str(e))
    except OSError as e:
        fail(os_error(e, run_dir))
