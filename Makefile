# pua-rs: the two commands a newcomer needs (run as root on Debian bookworm):
#   make run    build pua.so and run it in a real Kamailio on SQLite (demo/)
#   make test   build, then run every test: Rust unit tests and cfg-tests/
.PHONY: all deps build run test unit cfg-tests clippy fmt clean

CARGO ?= cargo

all: build

deps:
	bash kamailio-headers/install-deps.sh
	bash kamailio-headers/fetch.sh

build: deps
	$(CARGO) build --release
	cp target/release/libpua.so pua.so
	@echo "built $$(pwd)/pua.so"

run: build
	bash demo/run.sh $(ARGS)

unit: deps
	$(CARGO) test --workspace

cfg-tests: build
	python3 cfg-tests/run.py

test: build unit cfg-tests

clippy: deps
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
	rm -f pua.so
