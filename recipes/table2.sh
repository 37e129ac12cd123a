#!/usr/bin/env bash
# Table 2: the seven models, baseline / +AFM MLP / +AFM EMB: test AUC, logloss, parameters, and
# CPU inference throughput from lightning-afm-bench.
#
#   recipes/table2.sh small                                   # synthetic data (about 20 min on 2 cores)
#   recipes/table2.sh full criteo=/x/train.txt avazu=/x/train.csv
#
# One compression=afm run per model and dataset gives the three rows (the baseline before the
# first stage, then each stage after its finetune). The benchmark times the same structures at
# the paper's shapes (small: the Criteo shape with tables capped at 100,000 rows, 3 rounds; full:
# full vocabularies of each dataset run). MODELS=deepfm,dcn picks models (default: all seven).
# Options: out=DIR, -- HYDRA_OVERRIDES (see recipes/common.sh).

source "$(dirname "$0")/common.sh"
recipe_init table2 "$@"

MODELS=${MODELS:-dcn,deepfm,nfm,autoint,fibinet,dcnv2,gdcn}
bench_datasets=()
for ds in $(datasets); do
  # shellcheck disable=SC2046
  sweep "$ds" $(data_args "$ds") "model=$MODELS" compression=afm
  [[ $ds != synthetic ]] && bench_datasets+=("$ds")
done
if [[ $MODE == small ]]; then
  bench bench "models=[$MODELS]" "datasets=[criteo]" "variants=[baseline,afm_mlp,afm_emb]" vocab_cap=100000 rounds=3
else
  ds_list=$(IFS=,; echo "${bench_datasets[*]}")
  bench bench "models=[$MODELS]" "datasets=[$ds_list]" "variants=[baseline,afm_mlp,afm_emb]"
fi
report
