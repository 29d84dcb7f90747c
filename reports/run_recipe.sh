#!/usr/bin/env bash
# One full DMoERM recipe run on the shared data and its evaluation report.
#   reports/run_recipe.sh NAME [moerm train flags...]
# Labels, the recipe's work directory and the bundle go to $MOERM_RUNS/NAME (default runs/NAME,
# not committed); the report to reports/NAME.
# Every flag after NAME goes to `moerm train all` and `moerm evaluate` alike.
set -euo pipefail
name=$1
shift
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
moerm=${MOERM:-.venv/bin/moerm}
python=${PYTHON:-.venv/bin/python}
run=${MOERM_RUNS:-runs}/$name
recipe=$run/work # the recipe's work directory (moerm train --work)
mkdir -p "$run"
log() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }
# Wall time and peak memory of a step, with GNU time when the machine has it.
timed() {
  local out=$1
  shift
  if [ -x /usr/bin/time ]; then
    /usr/bin/time -f "%e s wall, %M KiB peak resident memory" -o "$run/$out" "$@"
  else
    "$@"
  fi
}

# Capability labels from the rule judges for train + validation (the packaged 135M
# LLM judge measured at chance, docs/judges.md; a hosted judge needs --judge openai).
log "rule labels"
"$python" - "$run" "$recipe" "$@" <<'PY'
import sys
from pathlib import Path

from moerm.judges.base import save_labels
from moerm.judges.rules import rule_labels
from moerm.train import inputs

run, recipe, args = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
cap = int(args[args.index("--max-pairs-per-task") + 1]) if "--max-pairs-per-task" in args else 0
p = inputs.shared(recipe, max_pairs_per_task=cap)
labels, stats = rule_labels(p.inputs.train + p.inputs.validation, p.inputs.capabilities)
save_labels(labels, run / "rule-labels.jsonl")
print(f"{len(labels)} rule labels", file=sys.stderr)
PY
log "train all"
timed time-train.txt "$moerm" train all --work "$recipe" --labels "$run/rule-labels.jsonl" --out "$run/bundle" --no-progress "$@"
log "evaluate"
timed time-evaluate.txt "$moerm" evaluate --work "$recipe" --labels "$run/rule-labels.jsonl" --bundle "$run/bundle" \
  --out "reports/$name" --command-line "reports/run_recipe.sh $name $*" "$@"
cp "$recipe/split.json" "reports/$name/split.json"
for step in train evaluate; do
  [ -f "$run/time-$step.txt" ] && echo "$step: $(cat "$run/time-$step.txt")" >> "reports/$name/resources.txt"
done
log "done"
