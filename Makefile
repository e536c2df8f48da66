# Two commands do all the set-up: `make demo` and `make test`. Both create (or reuse) .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
WORKDIR ?= workdirs/demo
DEMO_CONFIG ?= configs/coca_base.py:variant=tiny
PYTEST_ARGS ?= -n 2

.PHONY: install demo test bench clean

$(VENV)/.installed: setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: install
	rm -rf $(WORKDIR)
	$(PY) main.py --config=$(DEMO_CONFIG) --workdir=$(WORKDIR)

test: install
	$(PY) -m pytest tests $(PYTEST_ARGS)

# vlp_jax against open_clip (bench/compare_open_clip.py): adds torch (CPU) and open_clip_torch.
bench: install
	$(PY) -m pip install -q -e ".[test,bench]"
	$(PY) bench/compare_open_clip.py

clean:
	rm -rf $(VENV) workdirs
