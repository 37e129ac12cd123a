#!/usr/bin/env bash
# Pareto: uniform ranks against budgeted (auto) ranks at budgets of 2x, 3x, 5x, 8x and 16x fewer
# parameters than the baseline, 3 seeds; the table (test AUC mean ± std, params, CPU latency at
# batch 10,000) and a PNG of test AUC against parameters and against latency.
#
#   recipes/pareto.sh small                        # synthetic data, 60,000 rows (about 6 min of CPU on 1 core)
#   recipes/pareto.sh sample                       # the shared Criteo sample (experiment=criteo_sample)
#   recipes/pareto.sh full criteo=/x/train.txt     # (and/or avazu=/x/train.csv)
#
# sample: the 10,000-row Criteo sample in ../shared/data (LIGHTNING_AFM_SHARED_DATA), split and model
# seeds varied together (seed=S data.seed=S) and the finetunes selected on its validation rows, as
# the README's sample figures are measured (no protocol=paper: its 1,000 test rows are noisy enough).
#
# Per seed, one baseline (compression=none, one epoch) is trained and kept; every compressed run
# starts from its seed's baseline (baseline=PATH), so uniform and auto finetune the same model.
# auto: compression=afm_auto compression.budget.ratio=R (ranks per MLP layer and per field).
# uniform: compression=afm at the (MLP rank, embedding rank) pair nearest baseline/R parameters
# from below, priced before training (python -m lightning_afm.report.pareto_ranks: for each
# embedding rank the largest MLP rank, a multiple of 8, that fits; of the pairs within 1 % of the
# largest count, the one nearest the paper's 64 : 2 proportion), with the rank never grown
# (compression.emb.grow_rank=false). A budget under the smallest structure (MLP rank 8, rank 1 per
# field: the FM's first-order weights and the first MLP Linear stay) is left out for both, and said so.
# Then every run's last.ckpt is timed at batch 10,000, interleaved in one process, on 1 thread.
# SEEDS=0,1,2 (default), RATIOS="2 3 5 8 16" (default), MODELS=deepfm (default).
# Options: out=DIR, -- HYDRA_OVERRIDES (see recipes/common.sh).

source "$(dirname "$0")/common.sh"
ARGS="$*"
if [[ ${1:-} == sample ]]; then  # small mode's settings, on the sample, in its own folder (out= still wins)
  shift
  set -- small "out=$ROOT/multirun/recipes/pareto/sample" "$@"
  recipe_init pareto "$@"
  MODE=sample
  COMMAND="recipes/pareto.sh $ARGS"
else
  recipe_init pareto "$@"
fi

SEEDS=${SEEDS:-0,1,2}
RATIOS=${RATIOS:-2 3 5 8 16}
MODEL="model=${MODELS:-deepfm}"
BIN=${LIGHTNING_AFM_BIN:-$ROOT/.venv/bin}
PY=$([[ -x $BIN/python ]] && echo "$BIN/python" || echo python3)
# small: fewer rows than the other recipes' small mode, so that 27 runs fit in minutes
SMALL_ROWS=(data.num_rows=60000)
# no per-epoch checkpoint files: each run keeps only its final last.ckpt (the latency step reads it)
DATA_ALL=(trainer.enable_checkpointing=false)

if [[ $MODE == sample ]]; then DATASETS=sample; else DATASETS=$(datasets); fi
for ds in $DATASETS; do
  if [[ $ds == sample ]]; then
    DATA=(experiment=criteo_sample 'data.seed=${seed}')
  else
    read -r -a DATA <<<"$(data_args "$ds")"
  fi
  [[ $ds == synthetic ]] && DATA+=("${SMALL_ROWS[@]}")
  DATA+=("${DATA_ALL[@]}")
  # one folder per seed (s0, s1, ...) that the compressed runs name through ${seed}
  sweep "${ds}_baseline" "${DATA[@]}" "$MODEL" compression=none "seed=$SEEDS" save_checkpoint=true \
    'hydra.sweep.subdir=s${seed}'
  echo "[$TABLE] uniform rank pairs for ratios $RATIOS" >&2
  # shellcheck disable=SC2086
  pairs=$($PY -m lightning_afm.report.pareto_ranks --ratios $RATIOS -- "${DATA[@]}" "$MODEL" \
    ${EXTRA[@]+"${EXTRA[@]}"} 2>"$OUT/${ds}_ranks.log") || { tail -n 20 "$OUT/${ds}_ranks.log" >&2; exit 1; }
  grep "left out" "$OUT/${ds}_ranks.log" >&2 || true
  while read -r ratio mlp emb params; do
    [[ $mlp == infeasible ]] && continue
    echo "[$TABLE] ${ratio}x: uniform MLP $mlp / emb $emb ($params parameters) against auto" >&2
    from=("baseline=$OUT/${ds}_baseline/s\${seed}/last.ckpt" "+pareto_ratio=$ratio" "seed=$SEEDS" save_checkpoint=true)
    sweep "${ds}_uniform_${ratio}x" "${DATA[@]}" "$MODEL" compression=afm "compression.mlp.rank=$mlp" \
      "compression.emb.rank=$emb" compression.emb.grow_rank=false "${from[@]}"
    sweep "${ds}_auto_${ratio}x" "${DATA[@]}" "$MODEL" compression=afm_auto "compression.budget.ratio=$ratio" \
      "${from[@]}"
  done <<<"$pairs"
done

echo "[$TABLE] latency at batch 10,000 of every run (log: $OUT/latency.log)" >&2
if ! taskset -c 0 true 2>/dev/null; then TASKSET=(); else TASKSET=(taskset -c 0); fi
OMP_NUM_THREADS=1 "${TASKSET[@]}" $PY -m lightning_afm.report.pareto_latency "$OUT" --threads 1 --rounds 3 \
  >"$OUT/latency.log" 2>&1 || { echo "[$TABLE] warning: latency not measured; see $OUT/latency.log" >&2; }
report
