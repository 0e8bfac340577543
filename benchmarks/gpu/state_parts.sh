#!/usr/bin/env bash
# Move a run's saved state between sessions through the device tool's limits (a call carries at most 64 MiB of
# tree and brings back at most 8 files of 16 MiB, 64 MiB together): the state as numbered parts, with a checksum.
#
#   bash benchmarks/gpu/state_parts.sh pack DIR DEST [MiB]   # DIR (e.g. OUT/implant-hive/state) → DEST/state.tgz.part-NN + DEST/state.sha256
#   bash benchmarks/gpu/state_parts.sh take DEST OUTDIR FIRST COUNT   # copy parts FIRST … FIRST+COUNT−1 (and the checksum) into OUTDIR
#   bash benchmarks/gpu/state_parts.sh unpack PARTS DIR      # PARTS/state.tgz.part-* → DIR, after checking the checksum
#
# A 1,000-edit implant (benchmarks/gpu/implant_full.sh) saves its state every 50 edits; its hive state is ~100 MB
# (docs/implantation.md), so it comes back over two calls (`take` 0 4, then 4 4, parts of 14 MiB by default) and
# goes out again over the calls that carry the model (`.carry/state/` in `carry`), before `RESUME=1`.
set -euo pipefail
step=${1:?pack DIR DEST [MiB] | take DEST OUTDIR FIRST COUNT | unpack PARTS DIR}; shift
case $step in
  pack)
    dir=$1; dest=$2; mib=${3:-14}
    mkdir -p "$dest" && rm -f "$dest"/state.tgz.part-* "$dest"/state.sha256
    tar czf - -C "$(dirname "$dir")" "$(basename "$dir")" | split -d -a 2 -b "${mib}M" - "$dest/state.tgz.part-"
    (cd "$dest" && cat state.tgz.part-* | sha256sum | cut -d' ' -f1 > state.sha256)
    ls "$dest"/state.tgz.part-* | wc -l ;;
  take)
    dest=$1; outdir=$2; first=$3; count=$4
    mkdir -p "$outdir" && cp "$dest/state.sha256" "$outdir/"
    for i in $(seq "$first" $(( first + count - 1 ))); do
      p=$(printf '%s/state.tgz.part-%02d' "$dest" "$i"); [ -f "$p" ] && cp "$p" "$outdir/"
    done; ls "$outdir" ;;
  unpack)
    parts=$1; dir=$2
    [ "$(cat "$parts"/state.tgz.part-* | sha256sum | cut -d' ' -f1)" = "$(cat "$parts/state.sha256")" ] || { echo "state parts do not match their checksum (a part missing?)" >&2; exit 1; }
    mkdir -p "$dir" && cat "$parts"/state.tgz.part-* | tar xzf - -C "$dir" ;;
  *) echo "unknown step $step" >&2; exit 2 ;;
esac
