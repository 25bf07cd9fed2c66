#!/usr/bin/env bash
# A one-node Kubernetes v1.20.2 cluster on loopback for flex's end-to-end tests:
# containerd, etcd, kube-apiserver, kube-controller-manager and a kubelet, each in its
# own session with its PID recorded, all state under one run root.
#
# Usage:
#   cluster.sh up                  start everything, wait for the node and a smoke pod
#   cluster.sh down                stop everything, unmount, detach loops, remove the run root
#   cluster.sh env                 print the shell exports (also in <run>/env)
#   cluster.sh status              which components run
#   cluster.sh stop|start|restart COMPONENT
#                                  one of etcd containerd apiserver kcm kubelet (tests of a
#                                  kubelet or KCM restart); rewrites <run>/env
#
# Environment:
#   FLEX_E2E_RUN        run root (default /var/lib/flex-e2e/run)
#   FLEX_E2E_CACHE      build cache root (default /var/cache/flex-e2e)
#   FLEX_E2E_K8S_BIN    use these Kubernetes binaries instead of build-k8s.sh's
#   FLEX_E2E_NODE_NAME  node name (default flex-e2e)
#   FLEX_E2E_FAKE_CNI   1 (default): give containerd a CNI config naming a plugin that does
#                       not exist, so the runtime reports NetworkReady and the node turns
#                       Ready (hostNetwork pods never call CNI). 0: node stays NotReady.
#   FLEX_E2E_EXTRA_ENV  extra NAME=VALUE words put in kubelet's and KCM's environment (so
#                       into every flex driver call), e.g. "FLEX_TIMINGS=1"
#   FLEX_E2E_KUBELET_ARGS / FLEX_E2E_KCM_ARGS   extra flags (word-split)
#   FLEX_E2E_SKIP_SMOKE=1  `up` does not run the smoke pod
set -euo pipefail
E2E_SCRIPT=cluster
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$here/lib.sh"

R=$E2E_RUN_ROOT
case $R in
/ | /var | /var/lib | /tmp | /root | "") die "refusing run root '$R'" ;;
/*) ;;
*) die "FLEX_E2E_RUN must be absolute: $R" ;;
esac
NODE=${FLEX_E2E_NODE_NAME:-flex-e2e}
BUSYBOX_IMAGE=flex.test/busybox:e2e
PAUSE_IMAGE=flex.test/pause:e2e
COMPONENTS=(containerd etcd apiserver kcm kubelet) # start order

# Loopback ports (nothing listens elsewhere).
ETCD_PORT=12379
ETCD_PEER_PORT=12380
APISERVER_PORT=16443
KUBELET_PORT=10250
KUBELET_HEALTHZ_PORT=10248
APISERVER=https://127.0.0.1:$APISERVER_PORT

PKI=$R/pki
LOGS=$R/logs
PIDS=$R/pids
KCFG=$R/kubeconfigs
CTRD=$R/containerd
CTRD_SOCK=$CTRD/containerd.sock
KUBELET_ROOT=$R/kubelet
KUBELET_PLUGINS=$R/kubelet-plugins
KCM_PLUGINS=$R/kcm-plugins
FLEX_POLICY=$R/flex-policy # shared by both, as the same file on every real machine
FLEX_NODE=$R/flex-node     # kubelet's FLEX_{LOG,STATE,CACHE,RUN}_DIR parent
FLEX_KCM=$R/flex-kcm       # KCM's
ENV_FILE=$R/env
COMPONENT_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

k8s_bin() {
	if [[ -n ${FLEX_E2E_K8S_BIN:-} ]]; then
		echo "$FLEX_E2E_K8S_BIN"
	elif [[ -f $R/k8s-bin ]]; then
		cat "$R/k8s-bin"
	else
		"$here/build-k8s.sh" || die "build-k8s.sh failed"
	fi
}

kubectl_admin() { "$BIN/kubectl" --kubeconfig "$KCFG/admin.kubeconfig" "$@"; }

pid_of() { [[ -f $PIDS/$1.pid ]] && cat "$PIDS/$1.pid"; }

# alive COMPONENT: its recorded PID runs and is still that component (its command line
# names the run root), not a recycled PID.
alive() {
	local pid
	pid=$(pid_of "$1") || return 1
	[[ -d /proc/$pid ]] || return 1
	tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -qF -- "$R/"
}

tail_log() {
	[[ -f $LOGS/$1.log ]] && tail -n "${2:-25}" "$LOGS/$1.log" | sed "s/^/    $1| /" >&2
	return 0
}

# wait_for COMPONENT SECONDS DESCRIPTION CMD...: poll CMD until it succeeds; fail early if
# the component died.
wait_for() {
	local comp=$1 secs=$2 what=$3 t0
	shift 3
	t0=$(now_us)
	while ! "$@" >/dev/null 2>&1; do
		if [[ -n $comp ]] && ! alive "$comp"; then
			tail_log "$comp" 40
			die "$comp exited while waiting for $what (log: $LOGS/$comp.log)"
		fi
		if (($(now_us) - t0 > secs * 1000000)); then
			[[ -n $comp ]] && tail_log "$comp" 40
			die "timed out after ${secs}s waiting for $what${comp:+ (log: $LOGS/$comp.log)}"
		fi
		sleep 0.3
	done
}

# launch COMPONENT CMD...: start CMD in its own session (setsid execs it: same PID), with
# stdio on its log and nothing else, and record the PID.
launch() {
	local comp=$1 pid exe
	shift
	mkdir -p "$LOGS" "$PIDS"
	printf '==== %s start %s: %s\n' "$comp" "$(date -u +%FT%TZ)" "$*" >>"$LOGS/$comp.log"
	setsid "$@" >>"$LOGS/$comp.log" 2>&1 </dev/null &
	pid=$!
	echo "$pid" >"$PIDS/$comp.pid"
	# setsid must have exec'd, not forked (it forks only if it leads its process group).
	sleep 0.05
	exe=$(readlink "/proc/$pid/exe" 2>/dev/null || true)
	[[ $exe != */setsid ]] || die "setsid forked for $comp; its PID would be wrong"
	log "started $comp (pid $pid, log $LOGS/$comp.log)"
}

tcp_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# ---- PKI --------------------------------------------------------------------
mkkey() { openssl ecparam -name prime256v1 -genkey -noout -out "$1" 2>/dev/null; }

# mkcert NAME SUBJECT EKU [SAN]: NAME.crt/NAME.key signed by the run's CA.
mkcert() {
	local name=$1 subj=$2 eku=$3 san=${4:-}
	mkkey "$PKI/$name.key"
	openssl req -new -key "$PKI/$name.key" -subj "$subj" -out "$PKI/$name.csr" 2>/dev/null
	{
		echo "basicConstraints=critical,CA:FALSE"
		echo "keyUsage=critical,digitalSignature"
		echo "extendedKeyUsage=$eku"
		[[ -z $san ]] || echo "subjectAltName=$san"
	} >"$PKI/$name.ext"
	openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" \
		-set_serial "0x$(openssl rand -hex 12)" -days 30 -extfile "$PKI/$name.ext" \
		-out "$PKI/$name.crt" 2>/dev/null || die "openssl could not sign $name"
	rm -f "$PKI/$name.csr" "$PKI/$name.ext"
}

make_pki() {
	mkdir -p "$PKI"
	chmod 700 "$PKI"
	mkkey "$PKI/ca.key"
	openssl req -x509 -new -key "$PKI/ca.key" -subj "/CN=flex-e2e-ca" -days 30 \
		-addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
		-out "$PKI/ca.crt" 2>/dev/null || die "openssl could not make the CA"
	mkcert apiserver "/CN=kube-apiserver" serverAuth \
		"IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
	mkcert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth
	mkcert admin "/O=system:masters/CN=flex-e2e-admin" clientAuth
	mkcert kcm "/CN=system:kube-controller-manager" clientAuth
	mkcert node "/O=system:nodes/CN=system:node:$NODE" clientAuth
	mkcert kubelet-serving "/CN=$NODE" serverAuth "IP:127.0.0.1,DNS:$NODE,DNS:localhost"
	openssl genrsa -traditional -out "$PKI/sa.key" 2048 2>/dev/null || die "openssl genrsa failed"
	openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
	chmod 600 "$PKI"/*.key
}

# kubeconfig NAME CERT: $KCFG/NAME.kubeconfig for the client cert $PKI/CERT.{crt,key}.
kubeconfig() {
	mkdir -p "$KCFG"
	cat >"$KCFG/$1.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: flex-e2e
  cluster:
    server: $APISERVER
    certificate-authority: $PKI/ca.crt
users:
- name: $1
  user:
    client-certificate: $PKI/$2.crt
    client-key: $PKI/$2.key
contexts:
- name: $1@flex-e2e
  context: {cluster: flex-e2e, user: $1}
current-context: $1@flex-e2e
EOF
	chmod 600 "$KCFG/$1.kubeconfig"
}

# ---- components ---------------------------------------------------------------
overlay_works() {
	local d=$R/tmp/overlay-probe ok=1
	mkdir -p "$d"/{l,u,w,m}
	if mount -t overlay overlay -o "lowerdir=$d/l,upperdir=$d/u,workdir=$d/w" "$d/m" 2>/dev/null; then
		ok=0
		umount "$d/m"
	fi
	rm -rf "$d"
	return $ok
}

write_containerd_config() {
	local snap=$1 cni=$R/cni
	mkdir -p "$CTRD"/{root,state,opt} "$cni/bin" "$cni/net.d"
	if [[ ${FLEX_E2E_FAKE_CNI:-1} == 1 ]]; then
		# Makes the CRI report NetworkReady (it counts loaded configs); a pod that is not
		# hostNetwork fails in RunPodSandbox ("failed to find plugin").
		cat >"$cni/net.d/10-flex-e2e-none.conflist" <<'EOF'
{"cniVersion": "0.4.0", "name": "flex-e2e-none",
 "plugins": [{"type": "flex-e2e-no-cni-use-hostNetwork"}]}
EOF
	fi
	cat >"$CTRD/config.toml" <<EOF
version = 2
root = "$CTRD/root"
state = "$CTRD/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = "$CTRD_SOCK"
[ttrpc]
  address = "$CTRD_SOCK.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "$CTRD/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "$snap"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$cni/bin"
    conf_dir = "$cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = ""
EOF
	echo "$snap" >"$CTRD/snapshotter"
}

start_containerd() {
	launch containerd containerd --config "$CTRD/config.toml"
	wait_for containerd 30 "containerd's socket" ctr --address "$CTRD_SOCK" version
}

start_etcd() {
	mkdir -p "$R/etcd"
	launch etcd etcd --name flex-e2e --data-dir "$R/etcd/data" \
		--listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
		--advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
		--listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
		--initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
		--initial-cluster "flex-e2e=http://127.0.0.1:$ETCD_PEER_PORT" \
		--log-level warn --logger zap
	wait_for etcd 30 "etcd on 127.0.0.1:$ETCD_PORT" tcp_open "$ETCD_PORT"
}

# kubelet refuses a loopback --node-ip, so the node's InternalIP is the machine's, where
# kubelet does not listen. The apiserver dials the node by its Hostname address instead,
# which it resolves through its own /etc/hosts (a bind mount in a private mount namespace)
# to 127.0.0.1: `kubectl logs/exec` work and kubelet stays on loopback. Mounts under the
# run root copied into that namespace are dropped, so it never pins a pod volume.
start_apiserver() {
	{
		cat /etc/hosts
		echo "127.0.0.1 $NODE"
	} >"$R/apiserver-hosts"
	# shellcheck disable=SC2016 # expanded by that sh
	local prelude='mount --bind "$1" /etc/hosts || exit 1
awk "{print \$5}" /proc/self/mountinfo | grep "^$2/" | sort -r | while read -r m; do umount -l "$m"; done
shift 2; exec "$@"'
	launch apiserver unshare --mount --propagation private sh -c "$prelude" sh "$R/apiserver-hosts" "$R" \
		"$BIN/kube-apiserver" \
		--etcd-servers "http://127.0.0.1:$ETCD_PORT" \
		--bind-address 127.0.0.1 --advertise-address 127.0.0.1 \
		--secure-port "$APISERVER_PORT" --insecure-port 0 \
		--tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
		--client-ca-file "$PKI/ca.crt" \
		--authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
		--endpoint-reconciler-type none \
		--service-cluster-ip-range 10.0.0.0/24 \
		--service-account-issuer https://kubernetes.default.svc.cluster.local \
		--service-account-key-file "$PKI/sa.pub" \
		--service-account-signing-key-file "$PKI/sa.key" \
		--kubelet-client-certificate "$PKI/apiserver-kubelet-client.crt" \
		--kubelet-client-key "$PKI/apiserver-kubelet-client.key" \
		--kubelet-certificate-authority "$PKI/ca.crt" \
		--kubelet-preferred-address-types Hostname \
		--allow-privileged=true --profiling=false --anonymous-auth=false
	wait_for apiserver 90 "kube-apiserver /readyz" kubectl_admin get --raw /readyz
}

# The environment of a component that execs flex: a clean one, flex's dirs, extras.
# flex_env ROLE_DIR -> words for `env -i`
flex_env() {
	local d=$1
	mkdir -p "$FLEX_POLICY" "$d"/{log,state,cache,run}
	chmod 700 "$FLEX_POLICY" "$d" "$d"/{log,state,cache,run}
	printf '%s\n' "PATH=$COMPONENT_PATH" "HOME=/root" "LANG=C.UTF-8" \
		"FLEX_POLICY_DIR=$FLEX_POLICY" "FLEX_LOG_DIR=$d/log" "FLEX_STATE_DIR=$d/state" \
		"FLEX_CACHE_DIR=$d/cache" "FLEX_RUN_DIR=$d/run"
	local w
	# shellcheck disable=SC2086
	for w in ${FLEX_E2E_EXTRA_ENV:-}; do printf '%s\n' "$w"; done
}

start_kcm() {
	mkdir -p "$KCM_PLUGINS"
	local envw extra
	mapfile -t envw < <(flex_env "$FLEX_KCM")
	read -r -a extra <<<"${FLEX_E2E_KCM_ARGS:-}"
	launch kcm env -i "${envw[@]}" "$BIN/kube-controller-manager" \
		--kubeconfig "$KCFG/kcm.kubeconfig" \
		--bind-address 127.0.0.1 --secure-port 0 --port 0 \
		--leader-elect=false \
		--use-service-account-credentials=true \
		--flex-volume-plugin-dir "$KCM_PLUGINS" \
		--attach-detach-reconcile-sync-period 5s \
		--service-account-private-key-file "$PKI/sa.key" \
		--root-ca-file "$PKI/ca.crt" \
		--cluster-signing-cert-file "$PKI/ca.crt" --cluster-signing-key-file "$PKI/ca.key" \
		--allocate-node-cidrs=false --profiling=false \
		"${extra[@]}"
	sleep 1
	alive kcm || {
		tail_log kcm 40
		die "kube-controller-manager exited at start (log: $LOGS/kcm.log)"
	}
}

write_kubelet_config() {
	mkdir -p "$KUBELET_ROOT" "$KUBELET_PLUGINS"
	cat >"$R/kubelet-config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
enableServer: true
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
tlsCertFile: $PKI/kubelet-serving.crt
tlsPrivateKeyFile: $PKI/kubelet-serving.key
cgroupDriver: cgroupfs
failSwapOn: false
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "1Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
nodeStatusUpdateFrequency: 4s
syncFrequency: 10s
fileCheckFrequency: 5s
volumeStatsAggPeriod: 10s
EOF
}

start_kubelet() {
	local envw extra attempt t0
	mapfile -t envw < <(flex_env "$FLEX_NODE")
	read -r -a extra <<<"${FLEX_E2E_KUBELET_ARGS:-}"
	mkdir -p /var/log/pods /var/log/containers # hard-coded in kubelet
	for attempt in 1 2 3 4 5; do
		launch kubelet env -i "${envw[@]}" "$BIN/kubelet" \
			--config "$R/kubelet-config.yaml" \
			--kubeconfig "$KCFG/node.kubeconfig" \
			--root-dir "$KUBELET_ROOT" --cert-dir "$KUBELET_ROOT/pki" \
			--volume-plugin-dir "$KUBELET_PLUGINS" \
			--container-runtime remote \
			--container-runtime-endpoint "unix://$CTRD_SOCK" \
			--image-service-endpoint "unix://$CTRD_SOCK" \
			--runtime-request-timeout 2m \
			--hostname-override "$NODE" \
			--pod-infra-container-image "$PAUSE_IMAGE" \
			--v 2 \
			"${extra[@]}"
		# The mountinfo race makes kubelet exit within its first seconds: retry it.
		t0=$(now_us)
		while (($(now_us) - t0 < 6000000)) && alive kubelet; do sleep 0.3; done
		alive kubelet && return 0
		if tail -n 50 "$LOGS/kubelet.log" | grep -q 'could not get consistent content of /proc/self/mountinfo'; then
			log "kubelet hit the /proc/self/mountinfo race (attempt $attempt); retrying"
			sleep 1
			continue
		fi
		tail_log kubelet 40
		die "kubelet exited at start (log: $LOGS/kubelet.log)"
	done
	die "kubelet kept exiting on the mountinfo race (log: $LOGS/kubelet.log)"
}

start_component() {
	case $1 in
	containerd) start_containerd ;;
	etcd) start_etcd ;;
	apiserver) start_apiserver ;;
	kcm) start_kcm ;;
	kubelet) start_kubelet ;;
	*) die "unknown component '$1' (one of: ${COMPONENTS[*]})" ;;
	esac
}

# stop_pid PID NAME [SECONDS]: TERM, then KILL after SECONDS.
stop_pid() {
	local pid=$1 name=$2 secs=${3:-10} i
	kill -TERM "$pid" 2>/dev/null || return 0
	for ((i = 0; i < secs * 10; i++)); do
		[[ -d /proc/$pid ]] || return 0
		# A zombie we are not the parent of cannot be reaped here; count it as gone.
		[[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) == Z ]] && return 0
		sleep 0.1
	done
	log "$name (pid $pid) ignored SIGTERM for ${secs}s: SIGKILL"
	kill -KILL "$pid" 2>/dev/null || true
}

stop_component() {
	local pid
	if alive "$1"; then
		pid=$(pid_of "$1")
		stop_pid "$pid" "$1"
		log "stopped $1 (pid $pid)"
	fi
	rm -f "$PIDS/$1.pid"
}

# ---- env file -----------------------------------------------------------------
write_env() {
	local c pid up
	{
		echo "# flex e2e cluster (cluster.sh); source this file"
		echo "export FLEX_E2E_RUN='$R'"
		echo "export FLEX_E2E_CACHE='$E2E_CACHE_ROOT'"
		echo "export FLEX_E2E_K8S_BIN='$BIN'"
		echo "export KUBECONFIG='$KCFG/admin.kubeconfig'"
		echo "export KUBECTL='$BIN/kubectl'"
		echo "export FLEX_E2E_APISERVER='$APISERVER'"
		echo "export FLEX_E2E_NODE_NAME='$NODE'"
		echo "export FLEX_E2E_NODE_KUBECONFIG='$KCFG/node.kubeconfig'"
		echo "export FLEX_E2E_KCM_KUBECONFIG='$KCFG/kcm.kubeconfig'"
		echo "export FLEX_E2E_PKI_DIR='$PKI'"
		echo "export FLEX_E2E_KUBELET_ROOT='$KUBELET_ROOT'"
		echo "export FLEX_E2E_KUBELET_PLUGIN_DIR='$KUBELET_PLUGINS'"
		echo "export FLEX_E2E_KCM_PLUGIN_DIR='$KCM_PLUGINS'"
		echo "# flex's dirs: the policy dir is shared; the others are per process tree"
		echo "export FLEX_POLICY_DIR='$FLEX_POLICY'"
		echo "export FLEX_E2E_POLICY_DIR='$FLEX_POLICY'"
		for c in LOG STATE CACHE RUN; do
			echo "export FLEX_E2E_NODE_FLEX_${c}_DIR='$FLEX_NODE/${c,,}'"
			echo "export FLEX_E2E_KCM_FLEX_${c}_DIR='$FLEX_KCM/${c,,}'"
		done
		echo "export FLEX_E2E_CONTAINERD_SOCK='$CTRD_SOCK'"
		echo "export FLEX_E2E_SNAPSHOTTER='$(cat "$CTRD/snapshotter" 2>/dev/null || echo overlayfs)'"
		echo "export FLEX_E2E_BUSYBOX_IMAGE='$BUSYBOX_IMAGE'"
		echo "export FLEX_E2E_PAUSE_IMAGE='$PAUSE_IMAGE'"
		echo "export FLEX_E2E_LOG_DIR='$LOGS'"
		for c in "${COMPONENTS[@]}"; do
			up=${c^^}
			pid=$(pid_of "$c" || true)
			echo "export FLEX_E2E_${up}_PID='${pid}'"
			echo "export FLEX_E2E_${up}_LOG='$LOGS/$c.log'"
		done
	} >"$ENV_FILE.tmp"
	mv -f "$ENV_FILE.tmp" "$ENV_FILE"
}

# ---- smoke pod ------------------------------------------------------------------
# pod_yaml NAME COMMAND [VOLUME_YAML]: a pod as the e2e tests make them.
smoke_pod_yaml() {
	cat <<EOF
apiVersion: v1
kind: Pod
metadata: {name: $1, namespace: default}
spec:
  nodeName: $NODE
  hostNetwork: true
  terminationGracePeriodSeconds: 5
  tolerations:
  - {key: node.kubernetes.io/not-ready, operator: Exists, effect: NoSchedule}
  - {key: node.kubernetes.io/not-ready, operator: Exists, effect: NoExecute}
  - {key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute}
  containers:
  - name: main
    image: $BUSYBOX_IMAGE
    imagePullPolicy: Never
    command: ["sh", "-c", "trap 'exit 0' TERM; echo smoke-ok; while :; do sleep 1; done"]
EOF
}

pod_running() { [[ $(kubectl_admin get pod "$1" -o 'jsonpath={.status.phase}' 2>/dev/null) == Running ]]; }

smoke() {
	local t0
	t0=$(now_us)
	kubectl_admin delete pod flex-e2e-smoke --ignore-not-found --wait=true >/dev/null
	smoke_pod_yaml flex-e2e-smoke | kubectl_admin create -f - >/dev/null
	wait_for kubelet 120 "the smoke pod to run" pod_running flex-e2e-smoke
	log "smoke pod running $(secs_since "$t0")s after creation"
	# Not waiting for a graceful delete: kubelet deletes the API object only once the
	# sandbox is gone, which its 1-minute container GC does (10-60 s).
	kubectl_admin delete pod flex-e2e-smoke --grace-period=0 --force >/dev/null 2>&1 ||
		die "could not delete the smoke pod"
	log "smoke pod deleted (forced; kubelet stops it in the background)"
}

node_registered() { kubectl_admin get node "$NODE" >/dev/null 2>&1; }
node_ready() {
	[[ $(kubectl_admin get node "$NODE" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}') == True ]]
}
default_sa() { kubectl_admin -n default get serviceaccount default >/dev/null 2>&1; }

# ---- up / down ---------------------------------------------------------------------
all_alive() {
	local c
	for c in "${COMPONENTS[@]}"; do alive "$c" || return 1; done
}

cmd_up() {
	need_root
	local t_up snap
	t_up=$(now_us)
	if [[ -f $ENV_FILE ]] && all_alive; then
		log "already up ($ENV_FILE)"
		cat "$ENV_FILE"
		return 0
	fi
	if [[ -e $R ]]; then
		log "cleaning up a previous run in $R"
		cmd_down
	fi
	ensure_packages "${E2E_RUNTIME_PACKAGES[@]}"
	BIN=$(k8s_bin)
	local b
	for b in kube-apiserver kube-controller-manager kubelet kubectl; do
		[[ -x $BIN/$b ]] || die "no $BIN/$b"
	done

	mkdir -p "$R"/{tmp,logs,pids}
	chmod 755 "$R"
	touch "$R/started"
	echo "$BIN" >"$R/k8s-bin"
	log "run root $R, binaries $BIN"

	make_pki
	kubeconfig admin admin
	kubeconfig kcm kcm
	kubeconfig node node
	log "PKI and kubeconfigs in $PKI, $KCFG"

	if overlay_works; then snap=overlayfs; else
		snap=native
		log "overlayfs mounts fail here: containerd uses the native snapshotter"
	fi
	write_containerd_config "$snap"
	start_containerd
	local src
	src=$(dirname "$BIN")/src/kubernetes
	[[ -d $src ]] || src=${FLEX_E2E_K8S_SRC:-}
	FLEX_E2E_K8S_SRC=$src FLEX_E2E_SNAPSHOTTER=$snap "$here/images.sh" import "$CTRD_SOCK" >/dev/null
	start_etcd
	start_apiserver
	log "kube-apiserver ready"
	start_kcm
	write_kubelet_config
	start_kubelet
	write_env
	wait_for kubelet 60 "node $NODE to register" node_registered
	log "node $NODE registered"
	wait_for kcm 60 "the default service account (KCM)" default_sa
	if [[ ${FLEX_E2E_FAKE_CNI:-1} == 1 ]]; then
		wait_for kubelet 60 "node $NODE to be Ready" node_ready
		log "node $NODE Ready"
	fi
	[[ ${FLEX_E2E_SKIP_SMOKE:-0} == 1 ]] || smoke
	write_env
	log "cluster up in $(secs_since "$t_up")s; env: $ENV_FILE"
	echo "cluster_up_seconds=$(secs_since "$t_up")" >"$R/up-time"
	cat "$ENV_FILE"
}

# Processes whose command line names the run root (components, shims, flex calls with
# pod paths), minus this script and its ancestors.
run_root_pids() {
	local self=$$ p skip=" " cmd
	p=$self
	while [[ $p -gt 1 ]]; do
		skip+="$p "
		p=$(awk '{print $4}' "/proc/$p/stat" 2>/dev/null || echo 1)
	done
	for p in /proc/[0-9]*; do
		p=${p#/proc/}
		[[ $skip == *" $p "* ]] && continue
		cmd=$(tr '\0' ' ' 2>/dev/null <"/proc/$p/cmdline") || continue
		[[ $cmd == *"$R/"* || $cmd == *"$R "* ]] && echo "$p"
	done
	return 0
}

# Every process in a cgroup kubelet made for pods (containers whose shim is gone too).
kubepods_pids() {
	local f
	for f in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods /sys/fs/cgroup/unified/kubepods; do
		[[ -d $f ]] || continue
		find "$f" -name cgroup.procs -exec cat {} + 2>/dev/null
	done | sort -u
}

# Mount points at or under DIR, deepest first (mountinfo's octal escapes decoded).
mounts_under() {
	local dir=$1
	awk '{print $5}' /proc/self/mountinfo | while read -r m; do
		m=$(printf '%b' "${m//\\/\\0}")
		[[ $m == "$dir" || $m == "$dir"/* ]] && echo "$m"
	done | awk '{print length($0) "\t" $0}' | sort -rn | cut -f2-
}

unmount_all() {
	local dir=$1 m ms
	for _ in 1 2 3 4 5; do
		mapfile -t ms < <(mounts_under "$dir")
		((${#ms[@]})) || return 0
		for m in "${ms[@]}"; do
			umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null ||
				log "WARNING: cannot unmount $m"
		done
	done
	mapfile -t ms < <(mounts_under "$dir")
	((${#ms[@]} == 0)) || log "WARNING: still mounted: ${ms[*]}"
}

cmd_down() {
	need_root
	local c pids p
	# Components first, kubelet before the runtime so it does not restart containers.
	for c in kubelet kcm apiserver etcd; do stop_component "$c"; done
	# Containers: kill their processes, then the shims, then containerd.
	mapfile -t pids < <(kubepods_pids)
	if ((${#pids[@]})); then
		log "killing ${#pids[@]} container processes"
		kill -KILL "${pids[@]}" 2>/dev/null || true
	fi
	stop_component containerd
	# Whatever else names the run root: shims, stray flex calls, a component whose PID
	# file was lost in a crash.
	for _ in 1 2 3; do
		mapfile -t pids < <(run_root_pids)
		((${#pids[@]})) || break
		log "stopping ${#pids[@]} processes still naming $R (container shims, stray calls): ${pids[*]}"
		for p in "${pids[@]}"; do stop_pid "$p" "pid $p" 5 & done
		wait
	done
	mapfile -t pids < <(kubepods_pids)
	((${#pids[@]} == 0)) || kill -KILL "${pids[@]}" 2>/dev/null || true

	[[ -d $R ]] && unmount_all "$R"
	# Loop devices backed by files under the run root.
	local dev back
	while read -r dev back; do
		[[ $back == "$R"/* ]] || continue
		if losetup -d "$dev" 2>/dev/null; then log "detached $dev ($back)"; else
			log "WARNING: cannot detach $dev ($back)"
		fi
	done < <(losetup -l -n -O NAME,BACK-FILE 2>/dev/null || true)
	# Pod cgroups kubelet left (empty now).
	local cg
	for cg in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
		[[ -d $cg ]] && find "$cg" -depth -type d -exec rmdir {} \; 2>/dev/null
	done
	# Pod logs this run wrote in kubelet's hard-coded /var/log/pods.
	if [[ -f $R/started ]]; then
		find /var/log/pods -mindepth 1 -maxdepth 1 -newer "$R/started" -exec rm -rf {} + 2>/dev/null || true
		find /var/log/containers -mindepth 1 -maxdepth 1 -xtype l -delete 2>/dev/null || true
	fi
	if [[ -d $R ]]; then
		mapfile -t ms < <(mounts_under "$R")
		((${#ms[@]} == 0)) || die "still mounted under $R: ${ms[*]}; not removing it"
		rm -rf --one-file-system "$R"
	fi
	log "down: nothing left of $R"
}

cmd_env() {
	[[ -f $ENV_FILE ]] || die "no $ENV_FILE: the cluster is not up (cluster.sh up)"
	cat "$ENV_FILE"
}

cmd_status() {
	local c rc=0
	for c in "${COMPONENTS[@]}"; do
		if alive "$c"; then echo "$c running pid $(pid_of "$c")"; else
			echo "$c not running"
			rc=1
		fi
	done
	return $rc
}

one_component() {
	local verb=$1 c=${2:-}
	[[ " ${COMPONENTS[*]} " == *" $c "* ]] || die "usage: cluster.sh $verb {${COMPONENTS[*]}}"
	need_root
	[[ -f $ENV_FILE ]] || die "the cluster is not up"
	BIN=$(k8s_bin)
	case $verb in
	stop) stop_component "$c" ;;
	start)
		if alive "$c"; then die "$c is already running (pid $(pid_of "$c"))"; fi
		start_component "$c"
		;;
	restart)
		stop_component "$c"
		start_component "$c"
		;;
	esac
	write_env
}

case ${1:-} in
up) cmd_up ;;
down) cmd_down ;;
env) cmd_env ;;
status) cmd_status ;;
stop | start | restart) one_component "$@" ;;
*)
	sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
	exit 2
	;;
esac
