#!/usr/bin/env bash
# Local container images for the e2e cluster (there is no registry to pull from):
#   flex.test/busybox:e2e   Debian's busybox-static, applets linked in /bin and friends
#   flex.test/pause:e2e     build/pause/linux/pause.c from the Kubernetes tree, gcc -static
# as docker-archive tarballs (one layer, a config with rootfs.diff_ids, manifest.json).
#
# Usage: images.sh build              write the tarballs, print their directory
#        images.sh import [SOCKET]    build, then `ctr -n k8s.io images import` them into the
#                                     containerd at SOCKET (default: the e2e cluster's)
# Environment: FLEX_E2E_CACHE (tarballs go to $FLEX_E2E_CACHE/images),
#              FLEX_E2E_K8S_SRC (Kubernetes tree; default: the one build-k8s.sh unpacked),
#              FLEX_E2E_SNAPSHOTTER (for import; default overlayfs).
set -euo pipefail
E2E_SCRIPT=images
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$here/lib.sh"

BUSYBOX_IMAGE=flex.test/busybox:e2e
PAUSE_IMAGE=flex.test/pause:e2e
OUT=$E2E_CACHE_ROOT/images

k8s_src() {
	if [[ -n ${FLEX_E2E_K8S_SRC:-} ]]; then
		echo "$FLEX_E2E_K8S_SRC"
		return
	fi
	local bin
	bin=$("$here/build-k8s.sh") || die "build-k8s.sh failed"
	echo "$(dirname "$bin")/src/kubernetes"
}

# docker_archive ROOTFS TAG OUT.tar CONFIG_JSON_FRAGMENT
# CONFIG_JSON_FRAGMENT is the image's "config" object (Entrypoint, Cmd, Env...).
docker_archive() {
	local rootfs=$1 tag=$2 out=$3 cfg=$4 work arch layer_sha config config_sha
	work=$(mktemp -d "$OUT/.build.XXXXXX")
	arch=$(dpkg --print-architecture)
	tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 --format=posix \
		--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
		-C "$rootfs" -cf "$work/layer.tar" .
	layer_sha=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
	mkdir "$work/$layer_sha"
	mv "$work/layer.tar" "$work/$layer_sha/layer.tar"
	config=$(printf '{"architecture":"%s","os":"linux","created":"1970-01-01T00:00:00Z","config":%s,"rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"history":[{"created":"1970-01-01T00:00:00Z","created_by":"flex e2e/images.sh"}]}' \
		"$arch" "$cfg" "$layer_sha")
	config_sha=$(printf '%s' "$config" | sha256sum | cut -d' ' -f1)
	printf '%s' "$config" >"$work/$config_sha.json"
	printf '[{"Config":"%s.json","RepoTags":["%s"],"Layers":["%s/layer.tar"]}]' \
		"$config_sha" "$tag" "$layer_sha" >"$work/manifest.json"
	tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$work" -cf "$out.tmp" \
		manifest.json "$config_sha.json" "$layer_sha"
	mv -f "$out.tmp" "$out"
	rm -rf "$work"
}

build_busybox() {
	local bb=/bin/busybox root
	ensure_packages busybox-static
	local linkage
	linkage=$(ldd "$bb" 2>&1 || true)
	[[ $linkage == *"not a dynamic executable"* ]] ||
		die "$bb is not statically linked (install busybox-static, not busybox)"
	root=$(mktemp -d "$OUT/.rootfs.XXXXXX")
	mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,tmp,proc,sys,dev,root,var/tmp}
	chmod 1777 "$root/tmp" "$root/var/tmp"
	cp "$bb" "$root/bin/busybox"
	local applet
	while read -r applet; do
		[[ $applet == bin/busybox ]] && continue
		mkdir -p "$root/$(dirname "$applet")"
		ln -sf /bin/busybox "$root/$applet"
	done < <("$bb" --list-full)
	printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$root/etc/passwd"
	printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
	docker_archive "$root" "$BUSYBOX_IMAGE" "$OUT/busybox.tar" \
		'{"Env":["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["sh"],"WorkingDir":"/"}'
	rm -rf "$root"
	log "busybox image: $OUT/busybox.tar ($BUSYBOX_IMAGE, busybox $(dpkg-query -W -f='${Version}' busybox-static 2>/dev/null || echo '?'))"
}

build_pause() {
	local src root
	src=$(k8s_src)/build/pause/linux/pause.c
	[[ -f $src ]] || die "no $src (run build-k8s.sh, or set FLEX_E2E_K8S_SRC)"
	command -v gcc >/dev/null || ensure_packages gcc libc6-dev
	root=$(mktemp -d "$OUT/.rootfs.XXXXXX")
	# As build/pause/Makefile (TAG 3.4, REV from git: here "e2e").
	gcc -Os -Wall -Werror -static -DVERSION=v3.4-e2e -o "$root/pause" "$src" ||
		die "gcc -static pause.c failed (is libc6-dev installed?)"
	strip "$root/pause" 2>/dev/null || true
	docker_archive "$root" "$PAUSE_IMAGE" "$OUT/pause.tar" \
		'{"Entrypoint":["/pause"],"WorkingDir":"/"}'
	rm -rf "$root"
	log "pause image: $OUT/pause.tar ($PAUSE_IMAGE)"
}

build_all() {
	mkdir -p "$OUT"
	build_busybox
	build_pause
}

import_all() {
	local sock=$1 snap=${FLEX_E2E_SNAPSHOTTER:-overlayfs} t
	[[ -S $sock ]] || die "no containerd socket at $sock (is the cluster up?)"
	command -v ctr >/dev/null || die "ctr not found (apt-get install containerd)"
	for t in busybox pause; do
		ctr --address "$sock" -n k8s.io images import --snapshotter "$snap" "$OUT/$t.tar" >&2 ||
			die "ctr images import $OUT/$t.tar failed"
	done
	log "imported $BUSYBOX_IMAGE and $PAUSE_IMAGE into $sock (k8s.io, snapshotter $snap)"
}

case ${1:-build} in
build)
	build_all
	echo "$OUT"
	;;
import)
	build_all
	import_all "${2:-$E2E_RUN_ROOT/containerd/containerd.sock}"
	;;
*)
	echo "usage: $0 build | import [CONTAINERD_SOCKET]" >&2
	exit 2
	;;
esac
