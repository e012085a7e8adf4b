# The two commands of the README: `make demo` and `make test`. Both run setup first.
.PHONY: setup test demo image lint cluster-up cluster-down bench

setup:
	bash hack/setup.sh

test: setup
	bash hack/test.sh

demo: setup
	.venv/bin/varmor dev up

# varmor's OCI image as dist/varmor-<version>.oci.tar: no container engine, reproducible.
image: setup
	.venv/bin/varmor dev image

lint:
	.venv/bin/ruff check varmor tests bench
	.venv/bin/ruff format --check varmor tests bench
	.venv/bin/mypy
	.venv/bin/lint-imports --no-cache

cluster-up:
	.venv/bin/varmor dev cluster up

cluster-down:
	.venv/bin/varmor dev cluster down
