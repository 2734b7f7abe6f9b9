# tether: make help lists the targets.
SHELL := /bin/bash
export PATH := $(PATH):/usr/local/go/bin
GO ?= go
# CI and root runs must not skip the BPF tests.
TEST_ENV := $(if $(filter 0,$(shell id -u)),TETHER_REQUIRE_BPF=1,)
# The committed BPF object is what this toolchain makes of bpf/: clang-14
# (loader/gen.go names it; bpf2go strips with llvm-14's llvm-strip-14) and
# libbpf-dev's bpf_helpers.h (upstream version; Debian revisions may
# change). check-toolchain refuses any other version.
# linux-libc-dev (the kernel's UAPI headers) is not pinned: it follows
# Debian 12's kernel updates and stays compatible; check-generated still
# shows any change it makes to the object. clang is for test/demo.
BPF_CC := clang-14
BPF_CC_VERSION := 14.0.6
LIBBPF_DEV_VERSION := 1.1.2
APT_PACKAGES := $(BPF_CC) llvm-14 clang-format-14 libbpf-dev clang bpftool iproute2 ethtool tcpdump
NODE_DIR := test/e2e/node
NODE_MODULES := $(NODE_DIR)/node_modules/.package-lock.json

.PHONY: help deps node-deps check-toolchain generate check-generated build test fuzz demo lint bench

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

deps: ## install the Debian packages the build and tests need (root)
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

check-toolchain: deps ## fail unless the BPF compiler and headers are the pinned versions
	@found=$$($(BPF_CC) -dumpversion 2>/dev/null); [ "$$found" = "$(BPF_CC_VERSION)" ] || \
		{ echo "BPF compiler $(BPF_CC): expected version $(BPF_CC_VERSION), found $${found:-none}"; exit 1; }
	@found=$$(dpkg-query -W -f='$${Version}' libbpf-dev 2>/dev/null | sed 's/^[0-9]*://; s/-[^-]*$$//'); [ "$$found" = "$(LIBBPF_DEV_VERSION)" ] || \
		{ echo "BPF headers libbpf-dev: expected version $(LIBBPF_DEV_VERSION), found $${found:-none}"; exit 1; }

generate: check-toolchain ## regenerate the BPF objects and Go bindings with bpf2go
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

fuzz: ## run each fuzz target for FUZZTIME (default 20s, or a count such as 20000x); FuzzDatapath needs root
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

lint: ## go vet, gofmt and clang-format (bpf/; make deps installs clang-format-14)
	$(GO) vet ./...
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	clang-format-14 --dry-run --Werror bpf/*.c bpf/*.h
