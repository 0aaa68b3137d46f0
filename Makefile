# The two commands README.md promises: `make demo` and `make test`.
# Everything builds with the release profile (tests, benches, the binary) so RocksDB compiles once.
# CARGO_TARGET_DIR is honoured; .ci/run points it at a folder outside the clone so CI reuses builds.

CARGO      ?= cargo
TARGET_DIR := $(or $(CARGO_TARGET_DIR),$(CURDIR)/target)
LEFT       := $(TARGET_DIR)/release/left

.PHONY: all deps build test demo bench bench-e2e bench-update bench-smoke fmt

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
	$(CARGO) run --release --example transport_bench -- --bytes 1G --runs 3 --encryption both
	$(CARGO) run --release --example transport_bench -- --bytes 256M --runs 3 --loss 0.01
	$(CARGO) run --release --example transport_bench -- --bytes 64M --runs 3 --loss 0.05

# The 1 GB update benchmark (issue 4): left serve/sync against an rsync daemon on loopback, cat and cp as
# the floor; 3 runs, medians; one JSON object on stdout, the plot committed as benches/update_bench.png.
bench-update: build
	python3 benches/update_bench.py --left $(LEFT) --runs 3 --plot benches/update_bench.png

# Scaled-down end-to-end benchmarks for CI: they must run to the end; their floors are judged on the
# full-size runs (`make bench-e2e`, BENCHMARKS.md), not on a shared CI machine.
bench-smoke: build
	$(CARGO) build --release --workspace --all-targets
	python3 benches/store_e2e.py --quick --left $(LEFT) > /dev/null
	python3 benches/many_files.py --quick --left $(LEFT) > /dev/null
	python3 benches/update_bench.py --quick --left $(LEFT) > /dev/null
	$(CARGO) run --release --example transport_bench -- --bytes 32M --runs 1 --encryption both > /dev/null
	$(CARGO) run --release --example transport_bench -- --bytes 8M --runs 1 --loss 0.05 > /dev/null

fmt:
	$(CARGO) fmt --all
