#!/usr/bin/env bash
# Builds a Python FlexVolume driver into a component with componentize-py (0.25.1):
#
#   sdk/python/build.sh [--world WORLD] [--wit DIR] [-p DIR]... APP_DIR MODULE OUT.wasm
#
# APP_DIR holds the driver's module MODULE (which assigns `Verbs = export(MyDriver)`); the SDK
# (`flex_driver`, beside this script) and any `-p DIR` (pure-Python dependencies) are added to
# its path. WORLD is one of wit/flex.wit's worlds (default `mount-driver`: log, mounts,
# config); the component imports exactly that world's capabilities. Nothing else of the
# build machine's Python is bundled: site-packages is an empty directory.
#
# componentize-py is taken from $COMPONENTIZE_PY, else from PATH; scripts/build-guests.sh
# installs the pinned version into target/guest-tools.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
world=mount-driver
wit=$here/../../wit
paths=()
while [ $# -gt 0 ]; do
  case $1 in
    --world) world=$2; shift 2 ;;
    --wit) wit=$2; shift 2 ;;
    -p) paths+=(-p "$2"); shift 2 ;;
    -*) echo "unknown option $1" >&2; exit 2 ;;
    *) break ;;
  esac
done
[ $# -eq 3 ] || { sed -n '2,12p' "$0" >&2; exit 2; }
app=$1 module=$2 out=$3
tool=${COMPONENTIZE_PY:-componentize-py}
command -v "$tool" >/dev/null || { echo "componentize-py not found (scripts/build-guests.sh installs it)" >&2; exit 1; }
version=$("$tool" --version)
[ "$version" = "componentize-py 0.25.1" ] || echo "warning: $version, the SDK is tested with 0.25.1" >&2
empty=$(mktemp -d)
trap 'rm -rf "$empty"' EXIT
mkdir -p "$empty/lib/python3/site-packages" "$(dirname "$out")"
# The driver may not share a name with the bindings' top-level module.
[ "$module" != wit_world ] || { echo "the module may not be called wit_world" >&2; exit 2; }
VIRTUAL_ENV=$empty "$tool" -q -d "$wit" -w "$world" componentize \
  -p "$app" -p "$here" "${paths[@]}" "$module" -o "$out"
