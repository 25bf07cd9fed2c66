# flex: build, demo and test. Everything needs the wasm32-wasip2 target:
#   rustup target add wasm32-wasip2
CARGO ?= cargo
GUESTS := -p flex-tmpfs -p flex-hostile -p flex-loop -p flex-ebs
# Where cargo puts the binaries: CARGO_TARGET_DIR is honoured.
TARGET_DIR := $(or $(CARGO_TARGET_DIR),$(CURDIR)/target)

.PHONY: build k8s demo test test-node e2e lint bench

# `flex` (per call, no compiler) and `flex-compile` (same crate and wasmtime, with Cranelift).
# `flex` is linked statically (static-pie, so still address-randomised), as deploy/Containerfile
# ships it: no dynamic loader, symbol binding or shared libraries at every exec (measured with
# `make bench`: about 0.3 ms CPU and 40 page faults fewer per call), and it runs unchanged in
# distroless kube-controller-manager images. Only this crate gets the flag (proc macros cannot).
build:
	$(CARGO) rustc --release -p flex --bin flex -- -C target-feature=+crt-static
# The compiler runs once per component and node, so it is built without fat LTO (profile
# `controller`): the artifacts are the same (same wasmtime, same `Config`), and the build is
# minutes shorter (measured on 2 cores: the fat-LTO link of Cranelift alone took 2.3 min).
	$(CARGO) build --profile controller -p flex --features compiler --bin flex-compile
	install -m 0755 $(TARGET_DIR)/controller/flex-compile $(TARGET_DIR)/release/flex-compile
# The provisioner (`flex provisioner` execs it from beside `flex`): a controller, built without
# fat LTO (profile `controller`).
	$(CARGO) build --profile controller -p flex-provisioner
	install -m 0755 $(TARGET_DIR)/controller/flex-provisioner $(TARGET_DIR)/release/flex-provisioner
	$(CARGO) build --release --target wasm32-wasip2 $(GUESTS)
# The Python and JavaScript drivers (componentize-py and componentize-js, installed on first use
# into target/guest-tools and sdk/js/node_modules).
	scripts/build-guests.sh
# The man pages (flex.1, flex-install.1, ...), from the same definitions as `flex help`.
	$(TARGET_DIR)/release/flex completions man --dir $(TARGET_DIR)/release/man

# A tmpfs volume's lifecycle, exec'd exactly as kubelet does it (needs root).
# The demo copies `flex` alone into its plugin dir: its first call finds the compiler here.
demo: export FLEX_COMPILER = $(TARGET_DIR)/release/flex-compile
demo: export FLEX_TARGET_DIR = $(TARGET_DIR)
demo: build
	scripts/demo.sh

# Every test: unit tests and tests through the real binary on real mounts (test-node), and
# the end-to-end tier on a real Kubernetes (e2e), side by side: the e2e tier mostly waits on
# kubelet's and KCM's sync loops, and every test keeps to its own directories, loop devices
# (found by backing file) and ports. Each one's output is printed whole when it ends. Needs root.
test:
	$(MAKE) --no-print-directory -j2 --keep-going --output-sync=target test-node e2e

# The Kubernetes build (cached by source version). It also fetches the Kubernetes 1.20 source
# whose OpenAPI spec tests/tests/deploy.rs validates the manifests against.
k8s:
	e2e/build-k8s.sh >/dev/null

# The test binaries build with profile `controller` (optimised, no LTO, unwinding): they drive
# the `flex` that `make build` made, and they reuse the dependencies the provisioner's build
# compiled. Under `--release` every one of the ~25 test binaries was fat-LTO linked against
# wasmtime, over dependencies compiled a second time for unwinding (measured: relinking them
# all took 168 s, against 26 s with this profile).
test-node: build k8s
	$(CARGO) test --profile controller --no-fail-fast -p flex -p flex-guest-sdk -p flex-tmpfs -p flex-loop -p flex-ebs -p flex-tests --lib --bins --tests
	$(CARGO) test --profile controller -p flex-provisioner

# A one-node Kubernetes v1.20.2 built from Debian's source (cached in /var/cache/flex-e2e: only a
# cold run builds it), kube-apiserver, kube-controller-manager and kubelet driving flex; the
# scenarios print the verbs each process sent. The cluster is torn down whatever happens.
e2e: build k8s
	FLEX_E2E_SKIP_SMOKE=1 e2e/cluster.sh up >/dev/null
	status=0; \
	  $(CARGO) test --profile controller -p flex-e2e --test scenarios -- --test-threads=1 --nocapture || status=1; \
	  $(CARGO) test --profile controller -p flex-e2e --test provisioning -- --test-threads=1 --nocapture || status=1; \
	  e2e/cluster.sh down >/dev/null 2>&1; exit $$status

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings
	shellcheck e2e/*.sh e2e/drivers/*/* scripts/*.sh
	for f in sdk/js/*.js sdk/js/build.mjs plugins/tmpfs-js/*.js; do node --check $$f || exit 1; done
	$(CARGO) clippy --release --target wasm32-wasip2 $(GUESTS) -p flex-guest-sdk -- -D warnings

# Per-call latency against /bin/true, native Rust, bash+jq and the flex of BENCH_BASELINE_REV
# (the release before the capability layer v2), all in the same run (prints tables). The
# baseline is built once into target/bench-baseline from a git worktree.
BENCH_BASELINE_REV ?= f8468e2
BENCH_BASELINE := $(CURDIR)/target/bench-baseline/$(BENCH_BASELINE_REV)
bench: build
	$(CARGO) build --release -p flex-native-tmpfs
	scripts/build-baseline.sh $(BENCH_BASELINE_REV) $(BENCH_BASELINE)
	FLEX_BENCH_BASELINE=$(BENCH_BASELINE)/flex $(CARGO) run --release -p flex-tests --bin bench -- 200
