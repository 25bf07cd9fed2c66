#!/usr/bin/env bash
# Builds the drivers written in Python and JavaScript (`make build` runs it after the Rust
# guests), beside them in $TARGET/wasm32-wasip2/release/ ($TARGET = CARGO_TARGET_DIR, default
# target/):
#   flex_hostpath_py.wasm   plugins/hostpath-py, componentize-py, world mount-provisioning-driver
#   flex_tmpfs_js.wasm      plugins/tmpfs-js,    componentize-js, world mount-provisioning-driver
# Installs the pinned toolchains when missing: componentize-py 0.25.1 (pip, into a venv at
# $TARGET/guest-tools/python) and componentize-js 0.23.0 (npm ci from sdk/js's lock file, into
# sdk/js/node_modules). Needs python3 (with venv and pip) and node/npm. A component is rebuilt
# only when its driver, the SDK or the WIT changed.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
out=$target/wasm32-wasip2/release
tools=$target/guest-tools
mkdir -p "$out" "$tools"

py_version="componentize-py 0.25.1"
componentize_py=$tools/python/bin/componentize-py
if [ "$("$componentize_py" --version 2>/dev/null)" != "$py_version" ]; then
  echo "installing $py_version into $tools/python" >&2
  rm -rf "$tools/python"
  python3 -m venv "$tools/python"
  "$tools/python/bin/pip" install --quiet --disable-pip-version-check componentize-py==0.25.1
fi

# npm records what it installed in node_modules/.package-lock.json: reinstall when the lock
# file changed since.
installed=$root/sdk/js/node_modules/.package-lock.json
if [ ! -e "$installed" ] || [ "$root/sdk/js/package-lock.json" -nt "$installed" ]; then
  echo "installing componentize-js 0.23.0 into sdk/js/node_modules" >&2
  (cd "$root/sdk/js" && npm ci --silent --no-audit --no-fund)
fi

# stale OUTPUT INPUT...: true when OUTPUT is missing or older than any file under INPUT.
stale() {
  local output=$1
  shift
  [ ! -e "$output" ] || [ -n "$(find "$@" -type f -newer "$output" -not -path '*/node_modules/*' -not -path '*/__pycache__/*' -print -quit)" ]
}

build() { # NAME COMMAND...
  local name=$1 started=$SECONDS
  shift
  "$@"
  echo "built $out/$name.wasm ($(($(stat -c %s "$out/$name.wasm") / 1024)) KiB, $((SECONDS - started)) s)" >&2
}

cd "$root"
if stale "$out/flex_hostpath_py.wasm" plugins/hostpath-py sdk/python wit; then
  build flex_hostpath_py env COMPONENTIZE_PY="$componentize_py" \
    sdk/python/build.sh --world mount-provisioning-driver plugins/hostpath-py hostpath "$out/flex_hostpath_py.wasm"
fi
if stale "$out/flex_tmpfs_js.wasm" plugins/tmpfs-js sdk/js wit; then
  build flex_tmpfs_js node sdk/js/build.mjs --world mount-provisioning-driver plugins/tmpfs-js/tmpfs.js "$out/flex_tmpfs_js.wasm"
fi
