#!/usr/bin/env bash
# Builds the per-call `flex` of an earlier revision for `make bench`'s before/after columns:
# scripts/build-baseline.sh REV OUT_DIR  ->  OUT_DIR/flex and OUT_DIR/flex-compile, its own
# compiler (artifact formats differ between revisions); kept, rebuilt only when missing.
set -euo pipefail
rev=$1 out=$2
[ -x "$out/flex" ] && [ -x "$out/flex-compile" ] && exit 0
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'git worktree remove --force "$work/src" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
git worktree add --detach "$work/src" "$rev" >/dev/null
mkdir -p "$out"
(
  cd "$work/src"
  export CARGO_TARGET_DIR="$out/target"
  cargo rustc --release -p flex --bin flex -- -C target-feature=+crt-static
  cargo build --release -p flex --features compiler --bin flex-compile
)
cp "$out/target/release/flex" "$out/target/release/flex-compile" "$out/"
