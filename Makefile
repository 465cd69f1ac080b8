# The README's two commands: `make demo` and `make test`. Everything installs into .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# the CPU build of torch lies on this kind of machine's disk; on a GPU box: make TORCH_SPEC=torch
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: install demo test test-unit bench clean corpus

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet "$(TORCH_SPEC)"
	$(VENV)/bin/pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

## The main job on embedded defaults: local S3 server, local Ray, offline Whisper model.
demo: $(STAMP)
	$(PY) -m pipelines.demo $(DEMO_ARGS)

## The whole test suite (unit + integration on local Ray and a real S3 server + real speech).
test: $(STAMP)
	$(PY) -m pytest tests -q $(PYTEST_ARGS)

test-unit: $(STAMP)
	$(PY) -m pytest tests/unit -q $(PYTEST_ARGS)

## Benchmarks print comparable figures (see benchmarks/RESULTS.md).
bench: $(STAMP)
	$(PY) benchmarks/prep_throughput.py
	$(PY) benchmarks/e2e_demo.py

## Regenerate the committed espeak-ng corpus (needs espeak-ng).
corpus: $(STAMP)
	$(PY) -m pipelines.demo_corpus

clean:
	rm -rf $(VENV) .pytest_cache

## Wheels for the GPU check's offline device (pydantic, pyyaml, rapidfuzz for Python 3.10-3.13), into
## .gpu_deps (git-ignored); see benchmarks/gpu_check.py and the README's "On a GPU".
.PHONY: gpu-deps
gpu-deps:
	benchmarks/gpu_deps.sh $(GPU_DEPS_DIR)
