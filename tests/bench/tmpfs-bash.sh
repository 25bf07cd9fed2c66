#!/usr/bin/env bash
# Benchmark baseline: the tmpfs driver written the classic way, a bash FlexVolume driver that
# parses kubelet's options with jq (in the style of the Kubernetes examples' lvm driver).
# Same verbs and mount as plugins/tmpfs. Needs bash, jq, findmnt, numfmt, mount.

usage() {
	err "Invalid usage. Usage: "
	err "\t$0 init"
	err "\t$0 mount <mount dir> <json params>"
	err "\t$0 unmount <mount dir>"
	exit 1
}

err() {
	echo -ne "$*" 1>&2
}

log() {
	echo -ne "$*" >&1
}

ismounted() {
	MOUNT=$(findmnt -n "${MNTPATH}" 2>/dev/null | cut -d' ' -f1)
	[ "${MOUNT}" == "${MNTPATH}" ]
}

domount() {
	MNTPATH=$1
	SIZE=$(echo "$2" | jq -r '.size // "64Mi"')
	FSGROUP=$(echo "$2" | jq -r '.["kubernetes.io/mounterArgs.FsGroup"] // empty')
	READWRITE=$(echo "$2" | jq -r '.["kubernetes.io/readwrite"] // "rw"')

	if ! BYTES=$(numfmt --from=auto "${SIZE}" 2>/dev/null) || [ "${BYTES}" -le 0 ]; then
		err "{ \"status\": \"Failure\", \"message\": \"invalid size ${SIZE}\"}"
		exit 1
	fi
	if ismounted; then
		log '{"status": "Success"}'
		exit 0
	fi
	OPTS="nosuid,nodev,size=${BYTES}"
	if [ -n "${FSGROUP}" ]; then
		OPTS="${OPTS},gid=${FSGROUP},mode=2775"
	else
		OPTS="${OPTS},mode=0777"
	fi
	if [ "${READWRITE}" == "ro" ]; then
		OPTS="${OPTS},ro"
	fi
	if ! mount -t tmpfs -o "${OPTS}" tmpfs "${MNTPATH}" >/dev/null 2>&1; then
		err "{ \"status\": \"Failure\", \"message\": \"Failed to mount tmpfs at ${MNTPATH}\"}"
		exit 1
	fi
	log '{"status": "Success"}'
	exit 0
}

unmount() {
	MNTPATH=$1
	if ! ismounted; then
		log '{"status": "Success"}'
		exit 0
	fi
	if ! umount "${MNTPATH}" >/dev/null 2>&1; then
		err "{ \"status\": \"Failure\", \"message\": \"Failed to unmount volume at ${MNTPATH}\"}"
		exit 1
	fi
	log '{"status": "Success"}'
	exit 0
}

op=$1

if [ "$op" = "init" ]; then
	log '{"status": "Success", "capabilities": {"attach": false, "supportsMetrics": true, "fsGroup": false}}'
	exit 0
fi

if [ $# -lt 2 ]; then
	usage
fi

shift

case "$op" in
	mount)
		domount "$@"
		;;
	unmount)
		unmount "$@"
		;;
	*)
		log '{"status": "Not supported"}'
		exit 0
		;;
esac

exit 1
