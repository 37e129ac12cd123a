#!/usr/bin/env bash
# Table 13: the paper's pipeline (compression=afm) over several seeds: mean and standard
# deviation of the test AUC and logloss of the baseline, +AFM MLP and +AFM EMB; PNG of the seeds.
#
#   recipes/table13.sh small                                  # synthetic data (about 10 min on 2 cores)
#   recipes/table13.sh full criteo=/x/train.txt avazu=/x/train.csv
#
# SEEDS=0,1,2 picks the seeds (default 0,1,2,3,4). As the paper (line 1202-1203), the seed divides
# the data (data.split_seed: which rows train, validate and test); the model's seed stays 0
# (line 1098-1099) and the table is the same data in both modes. MODELS=dcn picks another model
# (default deepfm). Options: out=DIR, -- HYDRA_OVERRIDES (see recipes/common.sh).

source "$(dirname "$0")/common.sh"
recipe_init table13 "$@"

for ds in $(datasets); do
  # shellcheck disable=SC2046
  sweep "$ds" $(data_args "$ds") "model=${MODELS:-deepfm}" compression=afm "data.split_seed=${SEEDS:-0,1,2,3,4}"
done
report
