# tether: make help lists the targets.
SHELL := /bin/bash
export PATH := $(PATH):/usr/local/go/bin
GO ?= go
# CI and root runs must not skip the BPF tests.
TEST_ENV := $(if $(filter 0,$(shell id -u)),TETHER_REQUIRE_BPF=1,)
APT_PACKAGES := clang llvm libbpf-dev bpftool iproute2 ethtool tcpdump
NODE_DIR := test/e2e/node
NODE_MODULES := $(NODE_DIR)/node_modules/.package-lock.json

.PHONY: help deps node-deps generate check-generated build test fuzz demo lint bench

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

deps: ## install the Debian packages the build and tests need (root)
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

generate: deps ## regenerate the BPF objects and Go bindings with bpf2go
	$(GO) generate ./loader/

check-generated: generate ## fail if the committed BPF objects differ from a fresh build
	@git diff --exit-code --stat -- loader/ || { echo "generated files are stale: run make generate and commit"; exit 1; }

build: ## build bin/tether
	$(GO) build -o bin/tether ./cmd/tether

$(NODE_MODULES): $(NODE_DIR)/package-lock.json
	cd $(NODE_DIR) && npm ci --no-audit --no-fund

node-deps: $(NODE_MODULES) ## install the pinned socket.io packages (npm ci)

test: deps node-deps ## run every test (as root: BPF, netns and end-to-end tests included)
	$(GO) vet ./...
	$(TEST_ENV) $(GO) test -count=1 -timeout 20m ./...

FUZZTIME ?= 20s
FUZZ_TARGETS := test/datapath:FuzzDatapath userspace/control:FuzzParseConfig userspace/control:FuzzAPIRequests userspace/control:FuzzParsers

fuzz: ## run each fuzz target for FUZZTIME (default 20s); FuzzDatapath needs root
	@set -e; for target in $(FUZZ_TARGETS); do \
		pkg=$${target%%:*}; name=$${target##*:}; \
		echo "fuzzing $$name in ./$$pkg for $(FUZZTIME)"; \
		$(TEST_ENV) $(GO) test -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) -fuzzminimizetime 5s ./$$pkg; \
	done

demo: deps node-deps build ## three Socket.IO nodes behind tether in namespaces, live, then torn down (root)
	test/demo/demo.sh

bench: deps build ## measure tether against floors, nginx and no balancer; writes bench-results.md (root; QUICK=1 for a fast look, PARTS=progrun,live,connections,control for some)
	@missing=""; for p in wrk nginx libnginx-mod-stream; do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	$(GO) run ./test/bench/cmd/tether-bench -tether bin/tether -out bench-results.md $(if $(QUICK),-quick,) $(if $(PARTS),-parts $(PARTS),)

lint: ## go vet and gofmt
	$(GO) vet ./...
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
