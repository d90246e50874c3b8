# promptd — `make run` starts the demo, `make test` runs the whole suite.
# libtorch 2.11.0 is provisioned from PyPI into .libtorch/ on first use (scripts/provision-libtorch.sh).
CARGO ?= cargo
LIBTORCH_STAMP := .libtorch/.complete-2.11.0
DEMO_MODEL ?= tests/fixtures/models/t5-v1_1-tiny
DEMO_PROMPTS ?= tests/fixtures/prompts/t5-v1_1-tiny

.PHONY: all libtorch build build-cuda test run fixtures clean

all: build

libtorch: $(LIBTORCH_STAMP)

$(LIBTORCH_STAMP):
	./scripts/provision-libtorch.sh

build: libtorch
	$(CARGO) build --release

# GPU build: links libtorch_cuda; run it where CUDA and torch 2.11 libraries are present.
build-cuda: libtorch
	$(CARGO) build --release --features cuda

test: libtorch
	$(CARGO) test --all-targets

run: build
	./scripts/demo.sh ./target/release/promptd $(DEMO_MODEL) $(DEMO_PROMPTS)

# Regenerates tests/fixtures with transformers + PEFT (needs: pip install torch transformers peft).
fixtures:
	python3 scripts/make_fixtures.py

clean:
	$(CARGO) clean
