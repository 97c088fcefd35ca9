# llm-user-operator Makefile. `make help` lists the targets.
SHELL := /usr/bin/env bash -o pipefail
.SHELLFLAGS := -ec

BIN ?= $(CURDIR)/bin
IMG ?= ghcr.io/llm-user-operator/llm-user-operator:dev
export GOFLAGS ?= -buildvcs=false

CONTROLLER_GEN := $(BIN)/controller-gen
GOLANGCI_LINT := $(BIN)/golangci-lint
GOVULNCHECK := $(BIN)/govulncheck
HELM := $(BIN)/helm

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*##"} /^[a-zA-Z_-]+:.*##/ {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

##@ Development

.PHONY: manifests
manifests: $(CONTROLLER_GEN) ## Generate CRDs and RBAC into config/ and copy CRDs into the chart.
	$(CONTROLLER_GEN) rbac:roleName=manager-role crd:allowDangerousTypes=false paths="./api/...;./internal/manager/...;./internal/controller/..." output:crd:artifacts:config=config/crd/bases
	$(CONTROLLER_GEN) rbac:roleName=proxy-role paths="./internal/proxyserver/..." output:rbac:artifacts:config=config/rbac/proxy
	cp config/crd/bases/*.yaml charts/llm-user-operator/crds/

.PHONY: generate
generate: $(CONTROLLER_GEN) ## Generate deepcopy code.
	$(CONTROLLER_GEN) object:headerFile="hack/boilerplate.go.txt" paths="./api/..."

.PHONY: fmt
fmt: ## gofmt the tree.
	gofmt -w $$(git ls-files '*.go')

.PHONY: vet
vet: ## go vet.
	go vet ./...

.PHONY: verify
verify: manifests generate ## Fail if generated files or formatting differ from what is committed.
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed: $$out"; exit 1; fi
	@go mod tidy && for d in hack/tools/*/; do (cd $$d && go mod tidy); done
	@if [ -n "$$(git status --porcelain -- api config charts go.mod go.sum hack/tools)" ]; then \
		echo "generated files are stale; run 'make manifests generate' and 'go mod tidy' and commit:"; \
		git status --porcelain -- api config charts go.mod go.sum hack/tools; git diff --stat; exit 1; fi

.PHONY: lint
lint: $(GOLANGCI_LINT) ## Run golangci-lint (pinned, built from source).
	$(GOLANGCI_LINT) run ./...

.PHONY: vulncheck
vulncheck: $(GOVULNCHECK) ## Run govulncheck (needs its online database).
	$(GOVULNCHECK) ./...

##@ Test

.PHONY: envtest
envtest: ## Make kube-apiserver and etcd available (built from the Go module proxy if need be).
	@hack/envtest-assets.sh >/dev/null

.PHONY: simulator
simulator: ## Build llm-d-inference-sim (the vLLM stand-in) into ./bin.
	@hack/simulator.sh >/dev/null

.PHONY: kube-tools
kube-tools: ## Build the pinned kube-controller-manager and kubectl (v1.37.2, as kube-apiserver) into ./bin.
	@hack/kube-tools.sh >/dev/null

# Packages whose code runs concurrently: tested again under the race detector.
RACE_PKGS := ./internal/proxy/... ./internal/quota/... ./internal/token/... ./internal/usage/... ./internal/proxyserver/...

.PHONY: test
test: manifests generate vet $(HELM) ## Run every test: unit, envtest (real API server), end-to-end; the concurrent packages under -race; every benchmark once.
	hack/install-deps.sh
	export KUBEBUILDER_ASSETS="$$(hack/envtest-assets.sh)" LLM_SIM_BINARY="$$(hack/simulator.sh)" HELM="$(HELM)" \
		KUBE_TOOLS_DIR="$$(hack/kube-tools.sh)"; \
	go test ./... -count=1 -timeout 30m && \
	go test -race -count=1 -timeout 20m $(RACE_PKGS) && \
	go test -run '^$$' -bench . -benchtime 1x -count=1 -timeout 10m ./...

.PHONY: bench
bench: build ## Run the proxy benchmark harness (not part of make test).
	hack/bench.sh

.PHONY: bench-scale
bench-scale: ## Run the scale benchmark: SCALE_USERS (10000) users through the operator and the proxy (not part of make test).
	hack/bench-scale.sh

##@ Build

.PHONY: build
build: ## Build the manager and proxy binaries into ./bin.
	CGO_ENABLED=0 go build -trimpath -o $(BIN)/manager ./cmd/manager
	CGO_ENABLED=0 go build -trimpath -o $(BIN)/proxy ./cmd/proxy

.PHONY: run
run: build ## Run a local control plane, the operator, the proxy it reconciles and a vLLM simulator (VLLM_URL=http://... for a real vLLM); state persists in bin/run.
	VLLM_URL="$(VLLM_URL)" hack/run-local.sh

.PHONY: run-clean
run-clean: ## Remove make run's state (etcd data, kubeconfigs, logs) so the next make run starts fresh.
	rm -rf $(BIN)/run

.PHONY: docker-build
docker-build: ## Build the container image (needs a Docker engine).
	docker build -t $(IMG) .

##@ Tools

# Each tool is pinned in its own module under hack/tools, so no tool's
# dependencies move ours or another tool's.
$(CONTROLLER_GEN): hack/tools/controller-gen/go.mod
	cd hack/tools/controller-gen && go build -o $@ sigs.k8s.io/controller-tools/cmd/controller-gen

$(GOLANGCI_LINT): hack/tools/golangci-lint/go.mod
	cd hack/tools/golangci-lint && go build -o $@ github.com/golangci/golangci-lint/v2/cmd/golangci-lint

$(HELM): hack/tools/helm/go.mod
	cd hack/tools/helm && go build -o $@ helm.sh/helm/v3/cmd/helm

$(GOVULNCHECK): hack/tools/govulncheck/go.mod
	cd hack/tools/govulncheck && go build -o $@ golang.org/x/vuln/cmd/govulncheck
