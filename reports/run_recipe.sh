#!/usr/bin/env bash
# One full DMoERM recipe run on the shared data and its evaluation report.
#   reports/run_recipe.sh NAME [moerm train flags...]
# Work directory, labels and bundle go to runs/NAME (not committed); the report to reports/NAME.
# Every flag after NAME goes to `moerm train all` and `moerm evaluate` alike.
set -euo pipefail
name=$1
shift
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
moerm=${MOERM:-.venv/bin/moerm}
python=${PYTHON:-.venv/bin/python}
work=runs/$name
mkdir -p "$work"
log() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }
# Wall time and peak memory of a step, with GNU time when the machine has it.
timed() {
  local out=$1
  shift
  if [ -x /usr/bin/time ]; then
    /usr/bin/time -f "%e s wall, %M KiB peak resident memory" -o "$work/$out" "$@"
  else
    "$@"
  fi
}

# Capability labels from the rule judges for train + validation (the packaged 135M
# LLM judge measured at chance, docs/judges.md; a hosted judge needs --judge openai).
log "rule labels"
"$python" - "$work" "$@" <<'PY'
import sys
from pathlib import Path

from moerm.judges.base import save_labels
from moerm.judges.rules import rule_labels
from moerm.train import inputs

work, args = Path(sys.argv[1]), sys.argv[2:]
cap = int(args[args.index("--max-pairs-per-task") + 1]) if "--max-pairs-per-task" in args else 0
p = inputs.shared(work / "work", max_pairs_per_task=cap)
labels, stats = rule_labels(p.inputs.train + p.inputs.validation, p.inputs.capabilities)
save_labels(labels, work / "rule-labels.jsonl")
print(f"{len(labels)} rule labels", file=sys.stderr)
PY
log "train all"
timed time-train.txt "$moerm" train all --work "$work/work" --labels "$work/rule-labels.jsonl" --out "$work/bundle" --no-progress "$@"
log "evaluate"
timed time-evaluate.txt "$moerm" evaluate --work "$work/work" --labels "$work/rule-labels.jsonl" --bundle "$work/bundle" \
  --out "reports/$name" --command-line "reports/run_recipe.sh $name $*" "$@"
cp "$work/work/split.json" "reports/$name/split.json"
for step in train evaluate; do
  [ -f "$work/time-$step.txt" ] && echo "$step: $(cat "$work/time-$step.txt")" >> "reports/$name/resources.txt"
done
log "done"
