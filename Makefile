PYTHON ?= python
DATA ?= ../shared/data

.PHONY: help install test test-all lint format bench

help:  ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

# llama.cpp's build for llama-cpp-python: the library and server only (no multimodal helper, tools, tests)
LLAMA_CMAKE_ARGS ?= -DLLAVA_BUILD=OFF -DMTMD_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_CURL=OFF

# ... and without its AMX kernels: -march=native turns them on where the CPU has AMX, and there llama.cpp 0.3.36's
# first decode segfaults on our machines (AMX Xeons; upstream: ggml-org/llama.cpp#20824, ggml_backend_amx_mul_mat);
# the AVX512/VNNI kernels remain. Only where the compiler knows the flags (x86 gcc/clang); elsewhere the build is
# unchanged.
LLAMA_NO_AMX := $(shell echo 'int main(void){return 0;}' | $${CC:-cc} -mno-amx-tile -mno-amx-int8 -mno-amx-bf16 \
	-x c -o /dev/null - 2>/dev/null && echo -mno-amx-tile -mno-amx-int8 -mno-amx-bf16)

install:  ## install torch (CPU wheel) first, then the lab with its dev and llm extras (builds llama.cpp once)
	$(PYTHON) -m pip install torch==2.13.0
	CFLAGS="$(LLAMA_NO_AMX) $$CFLAGS" CXXFLAGS="$(LLAMA_NO_AMX) $$CXXFLAGS" CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" \
		$(PYTHON) -m pip install -e ".[dev,llm]"

test:  ## the default (fast) suite; real-data tests run where RETRIEVAL_LAB_DATA is set
	$(PYTHON) -m pytest -m "not slow"

test-all:  ## everything, slow tests included (minutes)
	RETRIEVAL_LAB_DATA=$${RETRIEVAL_LAB_DATA:-$(DATA)} $(PYTHON) -m pytest

lint:  ## ruff check and format check
	$(PYTHON) -m ruff check retrieval_lab conf tests benchmarks
	$(PYTHON) -m ruff format --check retrieval_lab conf tests benchmarks

format:  ## apply ruff fixes and formatting
	$(PYTHON) -m ruff check --fix retrieval_lab conf tests benchmarks
	$(PYTHON) -m ruff format retrieval_lab conf tests benchmarks

bench:  ## the benchmarks (minutes; print tables and a JSON line each; train_step needs pip install -e ".[bench]")
	RETRIEVAL_LAB_DATA=$${RETRIEVAL_LAB_DATA:-$(DATA)} $(PYTHON) benchmarks/bm25.py
	RETRIEVAL_LAB_DATA=$${RETRIEVAL_LAB_DATA:-$(DATA)} $(PYTHON) benchmarks/encode.py
	RETRIEVAL_LAB_DATA=$${RETRIEVAL_LAB_DATA:-$(DATA)} $(PYTHON) benchmarks/train_step.py
