# All set-up is here: `make install` builds .venv from scratch (torch from the pinned CPU-capable pair).
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
#: make bench-det TASK=instance_segmentation: the Mask R-CNN benchmark
TASK ?= detection

.PHONY: install demo test fuzz bench bench-gpu bench-export bench-padding bench-latency bench-train bench-search repro clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q $(TORCH_PINS)
	$(VENV)/bin/pip install -q -e ".[test,export]"
	touch $@

demo: install  ## the main job on its built-in default: the whole workflow on the demo data
	$(VENV)/bin/sparsevit demo

test: install  ## the whole suite, on 2 processes (pytest-xdist)
	$(VENV)/bin/pytest -n 2

fuzz: install  ## the fuzzer of tests/test_fuzz.py with many more examples (hostile run configs and command lines)
	SPARSEVIT_FUZZ_EXAMPLES=400 $(VENV)/bin/pytest tests/test_fuzz.py

bench: install  ## ratios measured in one run; never part of the tests
	$(PY) benchmarks/bench_swin.py

bench-gpu: install  ## Swin-T 1344², batch 8, fp16/bf16 x eager/CUDA graphs/compile, 0-80% + a searched-style config
	$(PY) benchmarks/bench_gpu.py --json runs/bench_gpu.json

bench-export: install  ## exported ONNX dense vs sparse on onnxruntime CPU, with parity errors: the Swin backbone, then whole Faster R-CNN detectors at 512 px and on a mixed-aspect set
	$(PY) benchmarks/bench_export.py

bench-padding: install  ## a 16:9 image letterboxed on a square canvas vs alone (256², 512²), dense and 50%: MACs and time
	$(PY) benchmarks/bench_padding.py

bench-latency: install  ## latency-table predictions vs measurement (Swin-T 448² and DeiT-S 224², CPU)
	$(PY) benchmarks/bench_latency_table.py
	$(PY) benchmarks/bench_latency_table.py --model deit_small_patch16_224 --img-size 224

.PHONY: bench-det
bench-det: install  ## dense vs uniform vs searched Faster R-CNN (TASK=instance_segmentation: Mask R-CNN) on the demo COCO set: box (mask) AP, end-to-end and backbone latency
	$(PY) benchmarks/bench_det.py --task $(TASK)

.PHONY: bench-seg
bench-seg: install  ## `sparsevit pipeline` on the demo segmentation data at 512 px (Semantic FPN): mIoU, backbone and end-to-end speedups
	$(PY) benchmarks/bench_seg.py

bench-search: install  ## evolution vs random search vs best uniform vs downscaled dense, 5 seeds, 6 MAC budgets (at and between uniform grid points) + 1 latency budget
	$(PY) benchmarks/bench_search.py

.PHONY: bench-search-cost racing-agreement
bench-search-cost: install  ## one search alone / with shared prefixes / racing / both: wall, block-pair and kept-window executions, the pick. The demo's exhaustive search (93 networks, 800 images, ~5-10 min on 2 cores); ARGS=--quick (128 images, ~1-2 min, <= 5); ARGS="--setting bench-search" (bench-search's evolution at 128 px, ~7-15 min); ARGS="--demo runs/demo": its trained model
	$(PY) benchmarks/bench_search_cost.py $(ARGS)

racing-agreement: install  ## racing's pick vs the full search's on a trained demo (runs/demo, from `make demo`), 10 evolution seeds: same pick?, report-split top-1 of both (~10 min on 2 cores; ARGS="--demo DIR --seeds N")
	$(PY) benchmarks/racing_agreement.py $(ARGS)

bench-train: install  ## dense vs un-adapted vs adapted accuracy on the demo data (part of the report)
	$(VENV)/bin/sparsevit report --preset repro --out runs/repro

repro: install  ## report.md + plots: searched vs uniform vs downscaled dense at matched MACs and latency
	$(VENV)/bin/sparsevit report --preset repro --out runs/repro

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
