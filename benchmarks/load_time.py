"""Load time of the embedded base model: first load (dequantize GGUF + cache) and cached.

    .venv/bin/python benchmarks/load_time.py
Uses a fresh temporary LORAHIVE_HOME so the first load is really the first.
"""

from __future__ import annotations

import os
import tempfile

from lorahive.base import load_base


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["LORAHIVE_HOME"] = tmp
        first = load_base(device="cpu")
        print(f"first load (GGUF dequantize + safetensors cache): {first.seconds:.1f} s", flush=True)
        cached = load_base(device="cpu")
        print(f"cached load: {cached.seconds:.1f} s (from_cache={cached.from_cache})", flush=True)


if __name__ == "__main__":
    main()
