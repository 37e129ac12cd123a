#!/usr/bin/env bash
# Table 13: the paper's pipeline (compression=afm) over several seeds: mean and standard
# deviation of the test AUC and logloss of the baseline, +AFM MLP and +AFM EMB; PNG of the seeds.
#
#   recipes/table13.sh small                                  # synthetic data (about 10 min on 2 cores)
#   recipes/table13.sh full criteo=/x/train.txt avazu=/x/train.csv
#
# SEEDS=0,1,2 picks the seeds (default 0,1,2,3,4); the seed changes the initialisation and the
# batch order, the data and its split stay fixed (data.seed). MODELS=dcn picks another model
# (default deepfm). Options: out=DIR, -- HYDRA_OVERRIDES (see recipes/common.sh).

source "$(dirname "$0")/common.sh"
recipe_init table13 "$@"

for ds in $(datasets); do
  # shellcheck disable=SC2046
  sweep "$ds" $(data_args "$ds") "model=${MODELS:-deepfm}" compression=afm "seed=${SEEDS:-0,1,2,3,4}"
done
report
