# `make serve`: set up and run the service on the default model (the tiny twin unless
# COSYVOICE_MODEL_DIR names a real model directory). `make test`: set up and run the tests.
.PHONY: setup serve status test test-slow test-cluster lint bench

VENV := .venv/bin

setup: .venv/.installed

.venv/.installed: pyproject.toml benchmarks/pyproject.toml scripts/setup.sh
	bash scripts/setup.sh
	touch $@

serve: setup
	env $$($(VENV)/python -m serve_app.ray_environment) $(VENV)/serve run serve_config.yaml

# Ray starts a local cluster with token authentication on; its CLI sends the token (from
# ~/.ray/auth_token, RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN) only in token mode.
status:
	RAY_AUTH_MODE=token $(VENV)/serve status

test: setup
	$(VENV)/ruff check .
	$(VENV)/lint-imports
	$(VENV)/python -m pytest tests

test-slow: setup
	$(VENV)/python -m pytest tests -m slow

# The three-node Ray cluster test (placement, autoscaling, node loss), its figures printed.
test-cluster: setup
	$(VENV)/python -m pytest tests/deploy/test_cluster.py -m cluster -s

lint: setup
	$(VENV)/ruff check .
	$(VENV)/lint-imports

bench: setup
	$(VENV)/cosyvoice-serve bench
