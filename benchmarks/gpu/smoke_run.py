"""A few ticks of a tiny run through the whole CLI on the GPU (tiny random Llama), then a resume.

    python3 benchmarks/gpu/smoke_run.py OUT_DIR
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from tiny_runs import config_tree, save_base  # noqa: E402


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    tree = config_tree(save_base(out / "base"), ticks=3, agents=4)
    tree["aggregation"] = {"strategy": "weighted", "max_norm": 1.0, "reject_norm_ratio": 3.0}
    tree["attack"] = {"fraction": 0.25, "kind": "sign_flip"}
    (out / "cfg.yaml").write_text(yaml.safe_dump(tree))
    cli = [sys.executable, "-m", "lorahive.cli.main"]
    for args in (["run", str(out / "cfg.yaml"), "--out", str(out / "run")], ["resume", str(out / "run"), "--ticks", "5"], ["inspect", str(out / "run")]):
        done = subprocess.run(cli + args, capture_output=True, text=True)
        print("$ lorahive", " ".join(args), "->", done.returncode)
        print(done.stdout[-1500:], done.stderr[-1500:] if done.returncode else "")
        if done.returncode:
            sys.exit(done.returncode)


if __name__ == "__main__":
    main()
