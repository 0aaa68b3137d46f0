# The two commands README.md promises: `make demo` and `make test`.
# Everything builds with the release profile (tests, benches, the binary) so RocksDB compiles once.
# CARGO_TARGET_DIR is honoured; .ci/run points it at a folder outside the clone so CI reuses builds.

CARGO      ?= cargo
TARGET_DIR := $(or $(CARGO_TARGET_DIR),$(CURDIR)/target)
LEFT       := $(TARGET_DIR)/release/left

.PHONY: all deps build test demo bench bench-e2e fmt clean-demo

all: build

# Install what a fresh Debian/Ubuntu machine lacks (libclang for RocksDB's bindings, a C++ compiler,
# python3 for the data generator and bench scripts). Does nothing when everything is present.
deps:
	@scripts/deps.sh

build: deps
	$(CARGO) build --release --workspace --bins --examples

test: deps
	$(CARGO) test --release --workspace

demo: build
	@LEFT=$(LEFT) scripts/demo.sh

# Component benchmarks (criterion) and the end-to-end store benchmark on the 1 GiB data set.
bench: deps
	$(CARGO) bench --workspace

bench-e2e: build
	python3 benches/store_e2e.py --left $(LEFT)
	python3 benches/many_files.py --left $(LEFT)

fmt:
	$(CARGO) fmt --all
