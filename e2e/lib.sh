# shellcheck shell=bash
# Shared helpers for the e2e scripts. Sourced, not executed.
# shellcheck disable=SC2034 # the variables are for the scripts that source this

E2E_CACHE_ROOT=${FLEX_E2E_CACHE:-/var/cache/flex-e2e}
E2E_RUN_ROOT=${FLEX_E2E_RUN:-/var/lib/flex-e2e/run}

# Microseconds since the epoch (bash >= 5).
now_us() { echo "${EPOCHREALTIME/./}"; }
_e2e_t0=${_e2e_t0:-$(now_us)}

# secs_since US: seconds (one decimal) elapsed since the now_us value US.
secs_since() {
	local d=$(($(now_us) - $1))
	printf '%d.%d' $((d / 1000000)) $((d % 1000000 / 100000))
}

# log MSG...: a progress line on stderr with the seconds since the script started.
log() {
	printf '[%s +%ss] %s\n' "${E2E_SCRIPT:-e2e}" "$(secs_since "$_e2e_t0")" "$*" >&2
}

die() {
	printf '[%s] ERROR: %s\n' "${E2E_SCRIPT:-e2e}" "$*" >&2
	exit 1
}

need_root() {
	[[ $(id -u) -eq 0 ]] || die "must run as root (it installs packages, mounts, runs kubelet)"
}

# ensure_packages PKG...: apt-get install the packages that are not installed yet.
# Service start-up at install time is suppressed (policy-rc.d), so Debian's etcd
# or containerd units never grab the default ports.
ensure_packages() {
	local missing=() p
	for p in "$@"; do
		if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
			missing+=("$p")
		fi
	done
	((${#missing[@]})) || return 0
	log "apt-get install ${missing[*]}"
	local made_policy=false
	if [[ ! -e /usr/sbin/policy-rc.d ]]; then
		printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
		chmod 755 /usr/sbin/policy-rc.d
		made_policy=true
	fi
	local rc=0
	if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2; then
		log "apt-get install failed; running apt-get update and retrying"
		apt-get update -q >&2 || rc=$?
		if ((rc == 0)); then
			DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2 || rc=$?
		fi
	fi
	if $made_policy; then rm -f /usr/sbin/policy-rc.d; fi
	((rc == 0)) || die "could not install: ${missing[*]}"
}

# Packages the cluster needs at run time (installed by build-k8s.sh too).
E2E_RUNTIME_PACKAGES=(etcd-server containerd runc busybox-static openssl gcc libc6-dev util-linux mount procps)
