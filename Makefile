# The README's two commands: `make quickstart` and `make test`.
.PHONY: quickstart test test-env lint bench clean

quickstart:
	./scripts/setup-env.sh
	.venv/bin/cloudkeep quickstart

test-env:
	./scripts/setup-env.sh --test

test: test-env lint
	.venv/bin/python -m pytest -q

lint:
	.venv/bin/ruff check src tests bench
	.venv/bin/mypy

bench: test-env
	./bench/run.sh

clean:
	rm -rf .venv node_modules .cloudkeep
