# Two commands do all set-up on a fresh Linux machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# PyTorch is pinned to the build this project is tested with; the installer picks CPU or CUDA wheels.
TORCH ?= torch==2.14.1 torchvision==0.29.1
DEMO_OUT ?= demo-out

.PHONY: demo test install browser clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[test]"
	touch $@

demo: install
	$(VENV)/bin/wsi-haloae demo --out $(DEMO_OUT)

test: install browser
	$(PY) -m pytest -q

# The viewer's headless-browser test drives Debian's chromium through chromedriver (selenium is in
# the test extra). Installed with apt when missing and possible (root with apt-get); otherwise, or
# if apt fails, that one test skips and says why. A no-op when both are already on PATH.
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing chromium and chromium-driver for the viewer's browser test"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
		{ apt-get update -q >/dev/null 2>&1 && \
		  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null 2>&1; } || \
		echo "warning: apt-get could not install chromium; the viewer's browser test will skip"; \
	else echo "note: no chromium/chromedriver and no root apt-get; the viewer's browser test will skip"; fi

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
