#!/usr/bin/env bash
# One full DMoERM recipe run on the shared data and its evaluation report.
#   reports/run_recipe.sh NAME [moerm train flags...]
# Labels, the recipe's work directory and the bundle go to $MOERM_RUNS/NAME (default runs/NAME,
# not committed); the report to reports/NAME.
# Every flag after NAME goes to `moerm train all` and `moerm evaluate` alike.
# CONTRAST=N: phase 2 also trains on capability-contrast pairs (moerm.judges.contrast) made from
# the run's train and validation pairs, at most N per task and edit family (0: all), and the
# experts are measured on held-out contrast pairs (edits of test responses; at most CONTRAST_TEST
# per task and family, default N) with `moerm evaluate-contrast` (reports/NAME/contrast.md).
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
# LLM judge measured at chance, docs/judges.md; a hosted judge needs --judge openai);
# with CONTRAST, also contrast pairs of the same train + validation pairs (no judge).
log "rule labels${CONTRAST:+ and contrast pairs}"
"$python" - "$run" "$recipe" "${CONTRAST:-}" "$@" <<'PY'
import sys
from pathlib import Path

from moerm.judges.base import save_labels
from moerm.judges.contrast import build_contrast_pairs, contrast_labels, pairs_path, write_contrast_pairs
from moerm.judges.rules import rule_labels
from moerm.train import inputs

run, recipe, contrast, args = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4:]
cap = int(args[args.index("--max-pairs-per-task") + 1]) if "--max-pairs-per-task" in args else 0
p = inputs.shared(recipe, max_pairs_per_task=cap)
labels, stats = rule_labels(p.inputs.train + p.inputs.validation, p.inputs.capabilities)
save_labels(labels, run / "rule-labels.jsonl")
print(f"{len(labels)} rule labels", file=sys.stderr)
if contrast:
    from moerm.data.splits import SplitManifest

    assignment = SplitManifest.load(recipe / "split.json").assignment
    pairs, stats = build_contrast_pairs(
        p.inputs.train + p.inputs.validation,
        p.inputs.capabilities,
        seed=0,
        groups=assignment,
        max_per_family=int(contrast),
    )
    save_labels(contrast_labels(pairs), run / "contrast.jsonl")
    write_contrast_pairs(pairs, pairs_path(run / "contrast.jsonl"))
    (run / "contrast.stats.md").write_text(stats.to_markdown())
    print(f"{len(pairs)} contrast pairs", file=sys.stderr)
PY
labels=("$run/rule-labels.jsonl")
[ -n "${CONTRAST:-}" ] && labels+=("$run/contrast.jsonl")
log "train all"
timed time-train.txt "$moerm" train all --work "$recipe" --labels "${labels[@]}" --out "$run/bundle" --no-progress "$@"
mkdir -p "reports/$name"
[ -n "${CONTRAST:-}" ] && cp "$run/contrast.stats.md" "reports/$name/contrast-train-stats.md"
log "evaluate"
timed time-evaluate.txt "$moerm" evaluate --work "$recipe" --labels "${labels[@]}" --bundle "$run/bundle" \
  --out "reports/$name" --command-line "${CONTRAST:+CONTRAST=$CONTRAST${CONTRAST_TEST:+ CONTRAST_TEST=$CONTRAST_TEST} }reports/run_recipe.sh $name $*" "$@"
if [ -n "${CONTRAST:-}" ]; then
  log "evaluate-contrast"
  max_length=256
  for ((i = 1; i <= $#; i++)); do [ "${!i}" = --max-length ] && { j=$((i + 1)); max_length=${!j}; }; done
  timed time-evaluate-contrast.txt "$moerm" evaluate-contrast --bundle "$run/bundle" --split-file "$recipe/split.json" \
    --max-per-family "${CONTRAST_TEST:-$CONTRAST}" --max-length "$max_length" --out "reports/$name" \
    --command-line "CONTRAST=$CONTRAST${CONTRAST_TEST:+ CONTRAST_TEST=$CONTRAST_TEST} reports/run_recipe.sh $name $* (its evaluate-contrast step)" >/dev/null
fi
cp "$recipe/split.json" "reports/$name/split.json"
for step in train evaluate-contrast evaluate; do
  [ -f "$run/time-$step.txt" ] && echo "$step: $(cat "$run/time-$step.txt")" >> "reports/$name/resources.txt"
done
log "done"
