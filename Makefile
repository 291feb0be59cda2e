# supernet-kernels developer targets. Run inside a virtual environment.
PYTHON ?= python
CUDA_HOME ?= /usr/local/cuda
# One architecture keeps the CUDA compile to ~30 s on 2 cores; unset for the full default list.
TORCH_CUDA_ARCH_LIST ?= 9.0
export CUDA_HOME TORCH_CUDA_ARCH_LIST

PY_SOURCES = supernet_kernels tests benchmarks python setup.py
CXX_SOURCES = $(shell find csrc tests/cpp -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh')

.PHONY: deps install native ctest test census test-all bench lint format clean

deps:  ## torch with CUDA (local wheel on our machines) and the test tools
	$(PYTHON) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PYTHON) -m pip install -q "pytest>=7" pytest-timeout expecttest matplotlib ruff cmake ninja \
		safetensors timm segment-anything transformers optuna scikit-learn pyyaml tqdm hypothesis

install: deps  ## build the native extension in place (editable) with the CUDA kernels
	$(PYTHON) -m pip install -q --no-build-isolation --no-deps -e .

native:  ## rebuild only the native extension
	$(PYTHON) -m pip install -q --no-build-isolation --no-deps -e .

ctest:  ## the same csrc/ through CMake (find_package(Torch)), C++ tests under ctest
	cmake -S . -B build/cmake -G Ninja -DCMAKE_BUILD_TYPE=Release \
		-DCMAKE_PREFIX_PATH="$$($(PYTHON) -c 'import torch; print(torch.utils.cmake_prefix_path)')" \
		-DPython3_EXECUTABLE="$$(command -v $(PYTHON))"
	cmake --build build/cmake -j2
	ctest --test-dir build/cmake --output-on-failure

test:  ## pytest; Triton kernels run on the CPU through the interpreter
	TRITON_INTERPRET=1 $(PYTHON) -m pytest -q --timeout=900 tests

census:  ## sm_90 kernel census without a GPU: figures, predicted times, gates (fails on a gate)
	$(PYTHON) benchmarks/census.py

# The census runs before pytest so that pytest's summary is the last thing CI prints.
test-all: install ctest census test  ## what CI runs (README's test command)

# The kernel benchmarks on the harness (benchmarks/harness/): GPU, the full sweeps; no GPU, the
# smoke sweeps. BENCH=quant picks one; BENCH_ARGS=--quick passes flags to each.
BENCH ?= lowrank quant attention mlp_block
bench:  ## the kernel benchmarks, then their reports (results in benchmarks/results/)
	for b in $(BENCH); do $(PYTHON) benchmarks/bench_$$b.py $(BENCH_ARGS) || exit 1; done

lint:
	ruff check $(PY_SOURCES)
	ruff format --check $(PY_SOURCES)
	clang-format --dry-run -Werror $(CXX_SOURCES)

format:
	ruff check --fix $(PY_SOURCES)
	ruff format $(PY_SOURCES)
	clang-format -i $(CXX_SOURCES)

clean:
	rm -rf build supernet_kernels/_C*.so *.egg-info
