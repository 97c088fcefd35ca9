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
GITLEAKS := $(BIN)/gitleaks
GITLEAKS_VERSION := v8.30.1

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*##"} /^[a-zA-Z_-]+:.*##/ {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

##@ Development

.PHONY: manifests
manifests: $(CONTROLLER_GEN) ## Generate CRDs and RBAC into config/ and copy CRDs into the chart.
	$(CONTROLLER_GEN) rbac:roleName=manager-role crd:allowDangerousTypes=false paths="./api/...;./internal/manager/...;./internal/controller/..." output:crd:artifacts:config=config/crd/bases
	$(CONTROLLER_GEN) rbac:roleName=proxy-role paths="./internal/proxyserver/..." output:rbac:artifacts:config=config/rbac/proxy
	cp config/crd/bases/*.yaml charts/llm-user-operator/crds/
	@# The chart templates its RBAC from these copies, so it cannot drift from config/rbac.
	mkdir -p charts/llm-user-operator/files/rbac
	cp config/rbac/role.yaml charts/llm-user-operator/files/rbac/manager-role.yaml
	cp config/rbac/leader_election_role.yaml config/rbac/tenant_editor_role.yaml config/rbac/tenant_viewer_role.yaml charts/llm-user-operator/files/rbac/
	@# The Prometheus Operator CRDs the chart tests install, from its pinned Go API types.
	cd hack/tools/monitoring-crds && $(CONTROLLER_GEN) crd:allowDangerousTypes=true,maxDescLen=0 \
		paths=github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1 output:crd:artifacts:config=$(BIN)/monitoring-crds
	mkdir -p hack/tools/monitoring-crds/crds
	cp $(BIN)/monitoring-crds/monitoring.coreos.com_servicemonitors.yaml $(BIN)/monitoring-crds/monitoring.coreos.com_prometheusrules.yaml hack/tools/monitoring-crds/crds/

.PHONY: generate
generate: $(CONTROLLER_GEN) ## Generate deepcopy code, the Grafana dashboards and the alert rules.
	$(CONTROLLER_GEN) object:headerFile="hack/boilerplate.go.txt" paths="./api/..."
	cd dashboards && go run . -chart ../charts/llm-user-operator

.PHONY: fmt
fmt: ## gofmt the tree.
	gofmt -w $$(git ls-files '*.go')

.PHONY: vet
vet: ## go vet.
	go vet ./...

.PHONY: verify
verify: manifests generate ## Fail if generated files or formatting differ from what is committed.
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed: $$out"; exit 1; fi
	@go mod tidy && for d in hack/tools/*/ dashboards/; do (cd $$d && go mod tidy); done
	@if [ -n "$$(git status --porcelain -- api config charts go.mod go.sum hack/tools dashboards)" ]; then \
		echo "generated files are stale; run 'make manifests generate' and 'go mod tidy' and commit:"; \
		git status --porcelain -- api config charts go.mod go.sum hack/tools dashboards; git diff --stat; exit 1; fi

.PHONY: lint
lint: $(GOLANGCI_LINT) $(GITLEAKS) ## golangci-lint with gosec, and gitleaks over the tree and the git history (both pinned).
	$(GOLANGCI_LINT) run ./...
	cd dashboards && $(GOLANGCI_LINT) run --config ../.golangci.yml ./...
	$(GITLEAKS) dir --config .gitleaks.toml --no-banner --redact --log-level warn .
	$(GITLEAKS) git --config .gitleaks.toml --no-banner --redact --log-level warn .

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

.PHONY: test-cluster
test-cluster: $(HELM) ## The real-node test (root): a single-node Kubernetes in a network namespace (hack/cluster.sh), the chart installed with helm, pods serving tokens end to end; always torn down.
	trap 'hack/cluster.sh down' EXIT; \
	hack/cluster.sh up && \
	HELM="$(HELM)" go test -tags cluster -exec "$(CURDIR)/hack/cluster.sh exec" -run '^TestCluster$$' -count=1 -timeout 30m -v ./test/cluster/

.PHONY: bench
bench: build ## Run the proxy benchmark harness (not part of make test).
	hack/bench.sh

.PHONY: bench-fairness
bench-fairness: ## Run the fairness benchmark: the fair queue against FCFS in front of a busy simulator (not part of make test).
	hack/bench-fairness.sh

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

##@ Release

# A release is one version for everything: the image tag, the chart's
# version and appVersion (the chart's default image tag), and the install
# manifests' image. The release workflow sets VERSION from the git tag.
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null | sed 's/^v//')
IMG_REPO ?= ghcr.io/llm-user-operator/llm-user-operator
CHART_REPO ?= oci://ghcr.io/llm-user-operator/charts
RELEASE_DIR ?= $(BIN)/release
# The pinned kubectl (hack/kube-tools.sh), built only when a release target needs it.
KUBECTL ?= $(shell hack/kube-tools.sh)/kubectl

.PHONY: release-chart
release-chart: $(HELM) ## Package the chart as VERSION, its image IMG_REPO:VERSION, into RELEASE_DIR.
	rm -rf $(RELEASE_DIR)/chart && mkdir -p $(RELEASE_DIR)/chart
	cp -r charts/llm-user-operator $(RELEASE_DIR)/chart/
	sed -i 's|^  repository: ghcr.io/llm-user-operator/llm-user-operator$$|  repository: $(IMG_REPO)|' $(RELEASE_DIR)/chart/llm-user-operator/values.yaml
	$(HELM) package $(RELEASE_DIR)/chart/llm-user-operator --version $(VERSION) --app-version $(VERSION) -d $(RELEASE_DIR)
	rm -rf $(RELEASE_DIR)/chart

.PHONY: release-manifests
release-manifests: ## Render the CRDs and config/default for IMG_REPO:VERSION into RELEASE_DIR (crds.yaml, install.yaml).
	rm -rf $(RELEASE_DIR)/config && mkdir -p $(RELEASE_DIR)
	cp -r config $(RELEASE_DIR)/config
	sed -i 's|^  newName: .*|  newName: $(IMG_REPO)|; s|^  newTag: .*|  newTag: "$(VERSION)"|' $(RELEASE_DIR)/config/default/kustomization.yaml
	$(KUBECTL) kustomize $(RELEASE_DIR)/config/default > $(RELEASE_DIR)/install.yaml
	$(KUBECTL) kustomize $(RELEASE_DIR)/config/crd > $(RELEASE_DIR)/crds.yaml
	rm -rf $(RELEASE_DIR)/config

.PHONY: release-push-chart
release-push-chart: release-chart ## Push the packaged chart to CHART_REPO (helm registry login first).
	$(HELM) push $(RELEASE_DIR)/llm-user-operator-$(VERSION).tgz $(CHART_REPO)

.PHONY: docker-buildx
docker-buildx: ## Build and push the multi-arch image IMG_REPO:VERSION (linux/amd64, linux/arm64).
	docker buildx build --platform linux/amd64,linux/arm64 -t $(IMG_REPO):$(VERSION) --push .

##@ Tools

# Each tool is pinned in its own module under hack/tools, so no tool's
# dependencies move ours or another tool's.
$(CONTROLLER_GEN): hack/tools/controller-gen/go.mod
	cd hack/tools/controller-gen && go build -o $@ sigs.k8s.io/controller-tools/cmd/controller-gen

$(GOLANGCI_LINT): hack/tools/golangci-lint/go.mod
	cd hack/tools/golangci-lint && go build -o $@ github.com/golangci/golangci-lint/v2/cmd/golangci-lint

$(HELM): hack/tools/helm/go.mod
	cd hack/tools/helm && go build -o $@ helm.sh/helm/v3/cmd/helm

$(GITLEAKS): hack/tools/gitleaks/go.mod
	cd hack/tools/gitleaks && go build -ldflags "-X github.com/zricethezav/gitleaks/v8/version.Version=$(GITLEAKS_VERSION)" -o $@ github.com/zricethezav/gitleaks/v8

$(GOVULNCHECK): hack/tools/govulncheck/go.mod
	cd hack/tools/govulncheck && go build -o $@ golang.org/x/vuln/cmd/govulncheck
