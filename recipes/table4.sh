#!/usr/bin/env bash
# Table 4: DeepFM with AFM, SVD and TTD: test AUC and logloss right after each swap
# ("pre-train") and after its finetune ("fine-tune"), for the MLP stage and the embedding stage,
# and CPU inference throughput from lightning-afm-bench.
#
#   recipes/table4.sh small                                   # synthetic data (about 10 min on 2 cores)
#   recipes/table4.sh full criteo=/x/train.txt avazu=/x/train.csv
#
# Runs compression=afm and svd (MLP, then embeddings), and afm_emb / svd_emb / ttd_emb /
# ttd_svd_emb (the embedding stage straight on the baseline: the comparison TTD, which only
# compresses tables, has on equal terms). TTD is TT-Rec at TT-rank 16 on the tables of >= 10^5
# rows and their LR tables: ttd_emb starts its cores at random as TT-Rec (the paper's TTD),
# ttd_svd_emb from TT-SVD of the trained tables; each is a row of the table.
# The benchmark times the same structures at the paper's shapes (small: the Criteo shape with
# tables capped at 100,000 rows, 3 rounds; full: the full vocabularies of each dataset run):
# baseline, afm_mlp, svd_mlp, afm_emb / svd_emb (cumulative: MLP and tables) and ttd_emb.
# MODELS=dcn picks another model (default deepfm).
# Options: out=DIR, -- HYDRA_OVERRIDES (see recipes/common.sh).

source "$(dirname "$0")/common.sh"
recipe_init table4 "$@"

# The synthetic tables are ~100x smaller than Criteo's (at most 29,122 rows seen): TTD takes those
# of >= 10^4 rows there (4 of 16), as 10^5 does the large ones at full size.
small_tt=()
[[ $MODE == small ]] && small_tt=(++compression.emb.ttd_min_rows=10000)  # ++: the multirun composes without its sweeps first

MODELS=${MODELS:-deepfm}
bench_datasets=()
for ds in $(datasets); do
  # shellcheck disable=SC2046
  sweep "$ds" $(data_args "$ds") "model=$MODELS" compression=afm,svd,afm_emb,svd_emb
  # the TTD runs apart: only their stage has ttd_min_rows
  # shellcheck disable=SC2046
  sweep "${ds}_ttd" $(data_args "$ds") "model=$MODELS" compression=ttd_emb,ttd_svd_emb \
    ${small_tt[@]+"${small_tt[@]}"}
  [[ $ds != synthetic ]] && bench_datasets+=("$ds")
done
variants="variants=[baseline,afm_mlp,afm_emb,svd_mlp,svd_emb,ttd_emb]"
if [[ $MODE == small ]]; then
  bench bench "models=[$MODELS]" "datasets=[criteo]" "$variants" vocab_cap=100000 rounds=3
else
  ds_list=$(IFS=,; echo "${bench_datasets[*]}")
  bench bench "models=[$MODELS]" "datasets=[$ds_list]" "$variants"
fi
report
