# Set-up and everyday commands. Everything runs inside .venv, created on first use.
# The tested versions (torch 2.13.0 CPU among them) are pinned in constraints.txt;
# pyproject.toml keeps open lower bounds.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv demo demo-quick test lint bench bench-repr clean

# pip's own chatter goes to .venv/install.log; only errors (and one line when done) reach the terminal.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[test]" \
		> $(VENV)/install.log 2>&1 || { grep -v "^WARNING: Location" $(VENV)/install.log; exit 1; }
	@$(BIN)/python -c "from importlib.metadata import version as v; \
		print(f'installed musetok {v(\"musetok\")} with torch {v(\"torch\")} into $(VENV) (pip log: $(VENV)/install.log)')"
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/musetok demo --out demo-out

demo-quick: $(STAMP)
	$(BIN)/musetok demo --quick --out demo-out

test: $(STAMP)
	$(BIN)/python -m pytest
	$(BIN)/ruff check .

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	@$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[test,bench]" \
		> $(VENV)/install.log 2>&1 || { grep -v "^WARNING: Location" $(VENV)/install.log; exit 1; }
	$(BIN)/python benchmarks/bench_tokenize.py
	$(BIN)/python benchmarks/bench_prior.py
	$(BIN)/python benchmarks/bench_scale.py

bench-repr: $(STAMP)
	$(BIN)/python benchmarks/bench_repr.py --out bench-out/repr

clean:
	rm -rf $(VENV) demo-out bench-out .pytest_cache .ruff_cache
