#!/usr/bin/env bash
# Installs the tmpfs driver into a throwaway kubelet plugin dir and runs a volume's lifecycle
# the way kubelet does: init, mount with kubelet's option JSON, unmount. Prints each call and
# its reply. Needs root (it really mounts) and `make build` first.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${FLEX_TARGET_DIR:-${CARGO_TARGET_DIR:-target}}

[ "$(id -u)" = 0 ] || { echo "demo: run as root (it mounts a tmpfs)" >&2; exit 1; }
node=$(mktemp -d /tmp/flex-demo.XXXXXX)
plugin_dir=$node/volume-plugins
export FLEX_POLICY_DIR=$node/policy FLEX_LOG_DIR=$node/log FLEX_CACHE_DIR=$node/cache
pod_dir=$node/pods/8d3c1f2e/volumes/flex~tmpfs/scratch
cleanup() { umount "$pod_dir" 2>/dev/null || true; }
trap cleanup EXIT

# Installed as kubelet expects: <plugindir>/<vendor~driver>/<driver>, component beside it,
# policy outside the plugin dir.
mkdir -p "$plugin_dir/flex~tmpfs" "$FLEX_POLICY_DIR" "$pod_dir"
cp "$target/release/flex" "$plugin_dir/flex~tmpfs/tmpfs"
cp "$target/wasm32-wasip2/release/flex_tmpfs.wasm" "$plugin_dir/flex~tmpfs/tmpfs.wasm"
cp plugins/tmpfs/policy.toml "$FLEX_POLICY_DIR/flex~tmpfs.toml"
driver=$plugin_dir/flex~tmpfs/tmpfs

call() {
  echo "\$ tmpfs $*"
  local start end rc=0 reply
  start=$(date +%s%N)
  reply=$("$driver" "$@" 2>&1) || rc=$?
  end=$(date +%s%N)
  echo "  -> $reply   (exit $rc, $(( (end - start) / 1000 )) us)"
}

options='{"kubernetes.io/fsType":"","kubernetes.io/mounterArgs.FsGroup":"2000","kubernetes.io/pod.name":"web-0","kubernetes.io/pod.namespace":"default","kubernetes.io/pod.uid":"8d3c1f2e","kubernetes.io/pvOrVolumeName":"scratch","kubernetes.io/readwrite":"rw","kubernetes.io/serviceAccount.name":"default","size":"16Mi"}'

echo "# plugin dir: $plugin_dir"
call init          # first call compiles the component and caches the artifact
call init          # later calls load the cached artifact
call mount "$pod_dir" "$options"
echo "  mounted: $(grep " $pod_dir " /proc/self/mountinfo | awk '{print $5, $(NF-2), $NF}')"
echo "hello from the pod" > "$pod_dir/greeting"
echo "  wrote $pod_dir/greeting; group $(stat -c %g "$pod_dir")"
call mount "$pod_dir" "$options"   # kubelet retries: still Success, still one mount
call unmount "$pod_dir"
call unmount "$pod_dir"
grep -q " $pod_dir " /proc/self/mountinfo && { echo "demo: still mounted" >&2; exit 1; }
call getvolumename '{"kubernetes.io/pvOrVolumeName":"scratch"}'
# One denial, through the development loop: the same driver under no policy at all.
flex=$target/release/flex
echo "\$ flex run --component tmpfs.wasm --no-policy --name flex~tmpfs mount $pod_dir <json>"
reply=$("$flex" run --component "$plugin_dir/flex~tmpfs/tmpfs.wasm" --no-policy --name flex~tmpfs \
  mount "$pod_dir" "$options" 2>/dev/null) || true
echo "  -> $reply"
grep -q " $pod_dir " /proc/self/mountinfo && { echo "demo: the denied mount happened" >&2; exit 1; }
echo "# the audit trail of this lifecycle (flex audit):"
"$flex" audit | sed 's/^/  /'
echo "# the denial (flex audit --decision deny --json):"
"$flex" audit --decision deny --json | sed 's/^/  /'
# The node's files go; its log and audit trail stay for the user to read.
rm -rf "$plugin_dir" "$FLEX_POLICY_DIR" "$FLEX_CACHE_DIR" "$node/pods"
echo "# log kept: FLEX_LOG_DIR=$FLEX_LOG_DIR $flex logs   (or: flex audit, flex logs --verb mount)"
echo "demo: lifecycle complete"
