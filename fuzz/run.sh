#!/usr/bin/env bash
# Run the cxrlake fuzz targets (cargo fuzz / libFuzzer + AddressSanitizer) one after the other.
#
#   fuzz/run.sh SECONDS [TARGET...]      e.g. fuzz/run.sh 30  (CI smoke), fuzz/run.sh 600 decode_png
#
# Installs cargo-fuzz if it is missing, generates the seed corpus (fuzz/make_corpus.py) into
# fuzz/corpus/<target> (kept between runs: libFuzzer adds the inputs that reach new code), then
# runs each target for SECONDS. Exits non-zero when a target finds a crash, a hang (an input
# taking more than FUZZ_TIMEOUT seconds), an out-of-memory (more than FUZZ_RSS_MB) or a leak;
# the input is saved in fuzz/artifacts/<target>/ and the log in fuzz/target/logs/<target>.log.
# Everything runs under `nice -n 19`: the machine is shared with model training.
#
# Environment: FUZZ_TIMEOUT (seconds per input, default 20), FUZZ_RSS_MB (default 2048),
# FUZZ_JOBS (cargo build jobs, default 2), PYTHON (interpreter with Pillow, default .venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:?usage: fuzz/run.sh SECONDS [TARGET...]}
shift
if ! [[ $seconds =~ ^[1-9][0-9]*$ ]]; then
  echo "fuzz/run.sh: SECONDS must be a positive integer, got '$seconds'" >&2
  exit 2
fi
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(decode_jpeg decode_png decode_dicom dicom_metadata arrow_batch)
fi
timeout_s=${FUZZ_TIMEOUT:-20}
rss_mb=${FUZZ_RSS_MB:-2048}
python=${PYTHON:-.venv/bin/python}
[ -x "$python" ] || python=python3

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz/run.sh: installing cargo-fuzz"
  nice -n 19 cargo install cargo-fuzz --locked --quiet
fi
# cargo fuzz passes -Zsanitizer=address and other unstable flags; only a stable toolchain is
# installed here, so allow them on it.
if ! rustc --version | grep -q nightly; then
  export RUSTC_BOOTSTRAP=1
fi

"$python" fuzz/make_corpus.py fuzz/corpus >/dev/null

mkdir -p fuzz/target/logs
echo "fuzz/run.sh: building the fuzz targets (release + debug assertions, AddressSanitizer)"
if ! CARGO_BUILD_JOBS="${FUZZ_JOBS:-2}" nice -n 19 cargo fuzz build -O >fuzz/target/logs/build.log 2>&1; then
  tail -n 60 fuzz/target/logs/build.log >&2
  echo "fuzz/run.sh: build failed (full log: fuzz/target/logs/build.log)" >&2
  exit 1
fi
# Known false positive, explained in the file.
export LSAN_OPTIONS="suppressions=$PWD/fuzz/lsan.supp${LSAN_OPTIONS:+:$LSAN_OPTIONS}"
status=0
for target in "${targets[@]}"; do
  log=fuzz/target/logs/$target.log
  echo "fuzz/run.sh: $target for ${seconds}s (timeout ${timeout_s}s/input, rss ${rss_mb} MB)"
  mkdir -p "fuzz/artifacts/$target"
  # One process per target: -rss_limit_mb and -timeout apply to each input; leaks are reported.
  mkdir -p "fuzz/corpus/$target"
  # dicom_metadata reads the same files as decode_dicom: its corpus seeds this one too.
  seeds=()
  [ "$target" = dicom_metadata ] && seeds=(fuzz/corpus/decode_dicom)
  if nice -n 19 cargo fuzz run -O "$target" "fuzz/corpus/$target" ${seeds[@]+"${seeds[@]}"} -- \
      -max_total_time="$seconds" -timeout="$timeout_s" -rss_limit_mb="$rss_mb" \
      -max_len=65536 -detect_leaks=1 -print_final_stats=1 \
      >"$log" 2>&1; then
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || true)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 | grep -o '[0-9]*' || true)
    corpus=$(find "fuzz/corpus/$target" -type f | wc -l)
    echo "fuzz/run.sh: $target ok: ${execs:-?} executions, coverage ${cov:-?} edges, corpus $corpus inputs"
  else
    status=1
    echo "fuzz/run.sh: $target FAILED; last lines of $log:" >&2
    tail -n 40 "$log" >&2
    ls -1 "fuzz/artifacts/$target" >&2 || true
  fi
done
exit $status
