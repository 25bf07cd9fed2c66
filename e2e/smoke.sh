#!/usr/bin/env bash
# Smoke check of the e2e cluster with a shell FlexVolume driver (drivers/shell~tmpfs):
# cluster up; install the driver in kubelet's and KCM's plugin dirs; a busybox pod with an
# inline flexVolume writes a file into it; the pod runs; it is deleted; no mount is left;
# which process ran which verb; cluster down.
#
#   FLEX_E2E_KEEP=1 smoke.sh   leave the cluster up afterwards
set -euo pipefail
E2E_SCRIPT=smoke
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$here/lib.sh"
need_root

t_up=$(now_us)
"$here/cluster.sh" up >/dev/null
up_secs=$(secs_since "$t_up")
# shellcheck disable=SC1091
. "$E2E_RUN_ROOT/env"
: "${KUBECTL:?}" "${FLEX_E2E_KUBELET_PLUGIN_DIR:?}" "${FLEX_E2E_KCM_PLUGIN_DIR:?}"

finish() {
	local rc=$?
	if ((rc != 0)); then
		log "FAILED (rc $rc); logs in $FLEX_E2E_LOG_DIR"
		tail -n 20 "$FLEX_E2E_KUBELET_LOG" | sed 's/^/    kubelet| /' >&2 || true
	fi
	if [[ ${FLEX_E2E_KEEP:-0} == 1 ]]; then
		log "FLEX_E2E_KEEP=1: cluster left up (source $FLEX_E2E_RUN/env)"
	else
		"$here/cluster.sh" down || rc=1
	fi
	exit "$rc"
}
trap finish EXIT

k() { "$KUBECTL" "$@"; }

# Install: staged under a dot-name (kubelet's prober skips those), then renamed into place.
drv='shell~tmpfs'
for dir in "$FLEX_E2E_KUBELET_PLUGIN_DIR" "$FLEX_E2E_KCM_PLUGIN_DIR"; do
	rm -rf "$dir/.$drv.staging" "${dir:?}/$drv"
	mkdir -p "$dir/.$drv.staging"
	install -m 0755 "$here/drivers/$drv/tmpfs" "$dir/.$drv.staging/tmpfs"
	mv "$dir/.$drv.staging" "$dir/$drv"
done
log "installed $drv in $FLEX_E2E_KUBELET_PLUGIN_DIR and $FLEX_E2E_KCM_PLUGIN_DIR"
sleep 2 # let the probers (fsnotify) see it

pod=flex-smoke-tmpfs
pod_yaml() {
	cat <<YAML
apiVersion: v1
kind: Pod
metadata: {name: $pod, namespace: default}
spec:
  nodeName: $FLEX_E2E_NODE_NAME
  hostNetwork: true
  terminationGracePeriodSeconds: 5
  automountServiceAccountToken: false
  tolerations:
  - {key: node.kubernetes.io/not-ready, operator: Exists, effect: NoSchedule}
  - {key: node.kubernetes.io/not-ready, operator: Exists, effect: NoExecute}
  containers:
  - name: main
    image: $FLEX_E2E_BUSYBOX_IMAGE
    imagePullPolicy: Never
    command: ["sh", "-c", "echo hello-from-pod > /data/hello && grep ' /data ' /proc/mounts && trap 'exit 0' TERM && while :; do sleep 1; done"]
    volumeMounts: [{name: scratch, mountPath: /data}]
  volumes:
  - name: scratch
    flexVolume: {driver: shell/tmpfs, options: {size: 8m}}
YAML
}

t0=$(now_us)
pod_yaml | k create -f - >/dev/null
deadline=$((t0 + 120000000))
until [[ $(k get pod "$pod" -o 'jsonpath={.status.phase}') == Running ]]; do
	if (($(now_us) > deadline)); then
		k describe pod "$pod" >&2 || true
		die "pod $pod not Running after 120s"
	fi
	sleep 0.2
done
latency=$(secs_since "$t0")
log "pod $pod Running ${latency}s after creation"

uid=$(k get pod "$pod" -o 'jsonpath={.metadata.uid}')
voldir=$FLEX_E2E_KUBELET_ROOT/pods/$uid/volumes/$drv/scratch
for _ in $(seq 50); do
	[[ -s $voldir/hello ]] && break
	sleep 0.2
done
[[ $(cat "$voldir/hello" 2>/dev/null) == hello-from-pod ]] || die "no file written by the pod in $voldir"
[[ $(findmnt -n -o FSTYPE "$voldir") == tmpfs ]] || die "$voldir is not a tmpfs mount"
log "host sees the pod's file in the tmpfs at $voldir ($(findmnt -n -o OPTIONS "$voldir"))"
logs=$(k logs "$pod") || die "kubectl logs $pod failed"
[[ $logs == *" /data tmpfs "* ]] || die "kubectl logs $pod does not show /data as tmpfs: $logs"
[[ $(k exec "$pod" -- cat /data/hello) == hello-from-pod ]] || die "kubectl exec failed"
log "kubectl logs and kubectl exec work; in the container: $logs"

t1=$(now_us)
k delete pod "$pod" --wait=false >/dev/null
for _ in $(seq 300); do
	grep -q "pods/$uid/" /proc/self/mountinfo || break
	sleep 0.2
done
if grep -q "pods/$uid/" /proc/self/mountinfo; then
	die "a mount of pod $uid is left: $(grep "pods/$uid/" /proc/self/mountinfo)"
fi
teardown=$(secs_since "$t1")
log "no mount of the pod is left ${teardown}s after the delete"
# kubelet removes the API object once the sandbox is gone too: its container GC runs
# once a minute, hence 10-60 s more.
k wait --for=delete "pod/$pod" --timeout=120s >/dev/null 2>&1 || true
if k get pod "$pod" >/dev/null 2>&1; then die "pod $pod still exists 120s after its delete"; fi
gone=$(secs_since "$t1")
log "pod object gone ${gone}s after the delete"

# Who ran what: the driver records its parent PID.
verbs() {
	[[ -f $1 ]] || return 0
	grep "ppid=$2 " "$1" | sed 's/.* verb=\([^ ]*\).*/\1/' | sort | uniq -c | awk '{printf " %s×%s", $2, $1}'
}
kubelet_verbs=$(verbs "$FLEX_E2E_NODE_FLEX_LOG_DIR/shell-tmpfs.calls" "$FLEX_E2E_KUBELET_PID")
kcm_verbs=$(verbs "$FLEX_E2E_KCM_FLEX_LOG_DIR/shell-tmpfs.calls" "$FLEX_E2E_KCM_PID")
log "kubelet (pid $FLEX_E2E_KUBELET_PID) ran:$kubelet_verbs"
log "kcm (pid $FLEX_E2E_KCM_PID) ran:$kcm_verbs"
[[ $kubelet_verbs == *" mount×"* && $kubelet_verbs == *" unmount×"* ]] || die "kubelet did not run mount and unmount"
[[ $kcm_verbs == *" init×"* ]] || die "kcm did not run init"
[[ $kcm_verbs != *"mount×"* ]] || die "kcm ran a mount verb"

echo "cluster_up_seconds=$up_secs pod_start_seconds=$latency unmounted_after_delete_seconds=$teardown pod_gone_after_delete_seconds=$gone"
log "smoke check passed"
