# The README's two commands: `make quickstart` and `make test`.
.PHONY: quickstart test test-env lint lint-machine-py39 bench clean

quickstart:
	./scripts/setup-env.sh
	.venv/bin/cloudkeep quickstart

test-env:
	./scripts/setup-env.sh --test

# Whole modules go to TEST_WORKERS processes (module fixtures and in-module order hold; peers start
# per worker on free ports); tests/conftest.py hands out the slow-marked modules first.
# PYTEST_ARGS adds options (e.g. --durations=60).
TEST_WORKERS ?= 3
test: test-env lint
	.venv/bin/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

lint: lint-machine-py39
	.venv/bin/ruff check src tests bench
	.venv/bin/ruff format --check src tests bench
	.venv/bin/mypy

# The machine side runs on CPython 3.9+: type-check it for 3.9 (datetime.UTC, zip(strict=), runtime
# X | Y ...). mypy 2 no longer targets 3.9, so a mypy 1.x lives in its own venv (setup-env.sh --test).
MYPY39 ?= $(HOME)/.cache/cloudkeep-tools/mypy39/bin/mypy
MACHINE_SIDE = src/cloudkeep/compat.py src/cloudkeep/errors.py src/cloudkeep/pathnames.py src/cloudkeep/heap.py \
	src/cloudkeep/repo src/cloudkeep/storage src/cloudkeep/protocol src/cloudkeep/machine \
	src/cloudkeep/providers/base.py src/cloudkeep/providers/queues.py src/cloudkeep/providers/facts.py \
	src/cloudkeep/providers/registry.py src/cloudkeep/providers/aws/facts.py src/cloudkeep/providers/azure/facts.py \
	src/cloudkeep/providers/local/facts.py src/cloudkeep/providers/aws/errors.py src/cloudkeep/providers/azure/errors.py \
	src/cloudkeep/providers/local/queues.py src/cloudkeep/providers/local/storage.py \
	src/cloudkeep/providers/aws/queues.py src/cloudkeep/providers/aws/sqs_client.py src/cloudkeep/providers/aws/storage.py \
	src/cloudkeep/providers/azure/queues.py src/cloudkeep/providers/azure/storage.py

lint-machine-py39:
	@test -x $(MYPY39) || { echo "no mypy for 3.9 at $(MYPY39): run ./scripts/setup-env.sh --test"; exit 2; }
	PYTHONPATH=src $(MYPY39) --python-version 3.9 --no-site-packages --follow-imports=silent \
		--no-warn-unused-ignores --cache-dir .mypy_cache/py39 $(MACHINE_SIDE)

bench: test-env
	./bench/run.sh

clean:
	rm -rf .venv node_modules .cloudkeep
