#!/usr/bin/env bash
# Coverage-guided fuzzing with libFuzzer on stable Rust (see README.md, "Fuzzing").
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# Builds the targets in fuzz/ and runs each for SECONDS (default 20), one after the other,
# starting from the committed seeds (fuzz/seeds/TARGET) and the working corpus of earlier
# runs (fuzz/corpus/TARGET, not committed). `scripts/fuzz.sh 3600` is the one-hour-per-target
# run. Prints executions, executions per second and findings per target; exits non-zero if
# any target found a crash, leaving the input in fuzz/artifacts/TARGET/.
#
# libFuzzer comes from the libfuzzer-sys crate (the engine cargo-fuzz drives), compiled by its
# build script: a C++ compiler is the only thing installed here (g++, from Debian, as root).
# The coverage flags are the ones `cargo fuzz build -s none` passes (cargo-fuzz 0.13), all
# stable rustc options, so neither nightly nor cargo-fuzz nor RUSTC_BOOTSTRAP is needed.
# FUZZ_JOBS sets cargo's build jobs; the fuzzer itself always runs one process at a time.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds=${1:-20}
shift || true
all=(decode_stream decode_versioned session amqp_frames password_file acl_file config topic_subject)
targets=("${@:-${all[@]}}")

# ---- tools ----
if ! command -v c++ >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "fuzz: installing g++ (libFuzzer is C++)" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends g++ >/dev/null
    else
        echo "fuzz: a C++ compiler is needed: sudo apt-get install g++" >&2
        exit 1
    fi
fi

# ---- build ----
host=$(rustc -vV | sed -n 's/^host: //p')
flags=(
    -Cpasses=sancov-module
    -Cllvm-args=-sanitizer-coverage-level=4
    -Cllvm-args=-sanitizer-coverage-inline-8bit-counters
    -Cllvm-args=-sanitizer-coverage-pc-table
    -Cllvm-args=-sanitizer-coverage-trace-compares
    -Cllvm-args=-sanitizer-coverage-stack-depth
    -Cllvm-args=-simplifycfg-branch-fold-threshold=0
    --cfg fuzzing
    # Release speed, but debug_assert! and overflow checks stay on: they are oracles too.
    -Cdebug-assertions
    -Coverflow-checks
)
# fuzz/Cargo.lock pins the build; when crates/ gain a dependency it is behind, and cargo
# adds what is missing (commit the result) rather than the run failing.
locked=(--locked)
if ! cargo metadata --locked --format-version 1 >/dev/null 2>&1; then
    echo "fuzz: fuzz/Cargo.lock lacks dependencies added to crates/; adding them" >&2
    locked=()
fi
# --target keeps these flags off build scripts and proc macros.
RUSTFLAGS="${flags[*]}" cargo build --release "${locked[@]}" --bins --target "$host" \
    ${FUZZ_JOBS:+--jobs "$FUZZ_JOBS"}
bin=target/$host/release

# ---- run ----
failed=()
printf '%-18s %8s %12s %10s %7s  %s\n' target seconds executions exec/s corpus finding >&2
for target in "${targets[@]}"; do
    mkdir -p "corpus/$target" "artifacts/$target"
    log="artifacts/$target/last-run.log"
    status=0
    start=$SECONDS
    # -timeout: an input taking 10 s is a hang, reported like a crash. -rss_limit_mb: one
    # input may not make the parsers allocate without bound.
    "$bin/$target" "corpus/$target" "seeds/$target" \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="artifacts/$target/" -print_final_stats=1 >"$log" 2>&1 || status=$?
    elapsed=$((SECONDS - start))
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    execs=${execs:-0}
    finding=none
    if [ "$status" != 0 ]; then
        finding=$(grep -o 'Test unit written to .*' "$log" | tail -1 | sed 's/Test unit written to //')
        finding=${finding:-"exit $status, see $log"}
        failed+=("$target")
    fi
    printf '%-18s %8s %12s %10s %7s  %s\n' "$target" "$elapsed" "$execs" \
        "$((execs / (elapsed > 0 ? elapsed : 1)))" "$(find "corpus/$target" -type f | wc -l)" \
        "$finding" >&2
done

# The plain closing line CI reads: each target is a test that passed if it found nothing.
echo "fuzz: $((${#targets[@]} - ${#failed[@]})) passed, ${#failed[@]} failed"
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz: findings in ${failed[*]}; the logs (fuzz/artifacts/TARGET/last-run.log) show the panic" >&2
    exit 1
fi
