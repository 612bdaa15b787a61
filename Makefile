# Two set-up commands, each works from a clean clone on a fresh machine:
#   make demo   -> installs into .venv, segments the embedded phantom case with the bundled model
#   make test   -> installs into .venv (with test extras), runs the whole test suite on the CPU
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test install clean

$(STAMP): pyproject.toml
	@free=$$(df -Pk . | awk 'NR==2 {print int($$4 / 1024)}'); [ "$$free" -ge 8500 ] || \
	  echo "warning: $$free MB free here; the install needs about 8 GB (PyTorch and its CUDA libraries)" >&2
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, so the resolver keeps this CPU-capable build instead of fetching another
	$(BIN)/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1" || $(BIN)/python -m pip install -q torch torchvision
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/brats-mamba demo -o demo-output --overwrite

test: $(STAMP)
	$(BIN)/python -m pytest -q Testing $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) demo-output .pytest_cache
