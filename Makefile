# flex: build, demo and test. Everything needs the wasm32-wasip2 target:
#   rustup target add wasm32-wasip2
CARGO ?= cargo
GUESTS := -p flex-tmpfs -p flex-hostile -p flex-loop -p flex-ebs

.PHONY: build demo test lint bench

build:
	$(CARGO) build --release -p flex
	$(CARGO) build --release --target wasm32-wasip2 $(GUESTS)

# A tmpfs volume's lifecycle, exec'd exactly as kubelet does it (needs root).
demo: build
	scripts/demo.sh

# Unit tests, then end-to-end tests through the real binary (needs root: real mounts).
test: build
	$(CARGO) test --release -p flex -p flex-tmpfs -p flex-tests --lib --bins --tests

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings
	$(CARGO) clippy --release --target wasm32-wasip2 $(GUESTS) -p flex-guest-sdk -- -D warnings

# Per-call latency against /bin/true, same run (prints a table).
bench: build
	$(CARGO) run --release -p flex-tests --bin bench -- 200
