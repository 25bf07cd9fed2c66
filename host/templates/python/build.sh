#!/usr/bin/env bash
# Builds the driver into a WebAssembly component, target/{{wasm}}.wasm, with componentize-py
# (the SDK is tested with 0.25.1; requirements-build.txt pins it):
#
#   ./build.sh [OUT.wasm]
#
# The component is built against the `mount-driver` world of wit/flex.wit: of flex's host
# capabilities it imports only flex:volume/log, mounts and config (plus the WASI interfaces
# componentize-py's Python always imports). Bundled: src/ (the driver, module `driver`) and
# vendor/ (the SDK, `flex_driver`); nothing of the build machine's Python (site-packages is an
# empty directory), so the driver may only use the standard library and those two.
#
# componentize-py is taken from $COMPONENTIZE_PY, else from .venv/ (see README.md), else from
# PATH.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/target/{{wasm}}.wasm}
tool=${COMPONENTIZE_PY:-}
if [ -z "$tool" ]; then
  if [ -x "$here/.venv/bin/componentize-py" ]; then
    tool=$here/.venv/bin/componentize-py
  elif command -v componentize-py >/dev/null; then
    tool=componentize-py
  else
    echo "componentize-py not found: python3 -m venv .venv && .venv/bin/pip install -r requirements-build.txt" >&2
    exit 1
  fi
fi
version=$("$tool" --version)
[ "$version" = "componentize-py 0.25.1" ] || echo "warning: $version, the SDK is tested with 0.25.1" >&2
empty=$(mktemp -d)
trap 'rm -rf "$empty"' EXIT
mkdir -p "$empty/lib/python3/site-packages" "$(dirname "$out")"
cd "$here"
VIRTUAL_ENV=$empty "$tool" -q -d wit -w mount-driver componentize -p src -p vendor driver -o "$out"
echo "built $out" >&2
