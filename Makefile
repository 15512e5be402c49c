# The two entry points of the README. Both set up .venv first (idempotent: a second
# run reuses the environment and the caches under $TAGLLM_HOME, default ~/.cache/tagllm).
.PHONY: setup demo test test-fast lint report docs

export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

setup:
	@bash scripts/setup.sh

# The QED recipe end to end on the embedded defaults (stage 1, stage 2, test table).
demo: setup
	.venv/bin/tagllm run recipes/qed.yaml

# Lint, then every test, the slow ones (the real embedded models, whole recipes, several
# processes, PEFT, Chemprop) included.
test: setup
	.venv/bin/ruff check src tests benchmarks
	.venv/bin/python -m pytest -m "slow or not slow" --durations=40

# The tests under ~10 s each on 2 cores (tiny random-weight models), without the slow ones.
test-fast: setup
	.venv/bin/python -m pytest

lint: setup
	.venv/bin/ruff check src tests benchmarks

# docs/results.md and report.html generated from the runs present (run their recipes
# first); RUNS lists what goes in.
RUNS ?= $(wildcard $(addsuffix /results.json,runs/qed runs/solubility runs/bbb \
	runs/lipinski runs/descriptor runs/binding-affinity runs/drug-combination \
	runs/translate runs/qed-in-context)) $(wildcard results/*-qed-lora.json \
	results/*-qed-prompt-tuning.json results/*-nci-ood.json \
	results/*-text-tags.json benchmarks/results/*-qed-ablations.json \
	benchmarks/results/*-tag-training-sweep.json)
report: setup
	.venv/bin/tagllm report $(RUNS) --html report.html --markdown docs/results.md \
		--preamble docs/results-preamble.md --title "tagllm results"

# docs/cli.md from the commands' own --help, docs/tasks.md's table of sources from the
# sources' registry and README.md's results table from the newest sweep file
# (tests/test_cli.py fails when any of them is stale)
docs: setup
	.venv/bin/python -c "from tagllm.cli import write_docs; write_docs()"
