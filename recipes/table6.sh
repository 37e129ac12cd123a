#!/usr/bin/env bash
# Table 6: AFM on the MLP with and without the ReLU between the two factors, before and after
# the finetune.
#
#   recipes/table6.sh small                                   # synthetic data (about 3 min on 2 cores)
#   recipes/table6.sh full criteo=/x/train.txt avazu=/x/train.csv
#
# Runs compression=afm_mlp (baseline epoch, AFM on MLP layers 2 and 3, finetune epoch) with the
# ReLU started inactive (relu_init=shift, ours), with the paper's plain ReLU (relu_init=plain,
# line 374-381, 753-765), and without the ReLU (relu=false). MODELS=dcn picks another model
# (default deepfm).
# Options: out=DIR, -- HYDRA_OVERRIDES (see recipes/common.sh).

source "$(dirname "$0")/common.sh"
recipe_init table6 "$@"

for ds in $(datasets); do
  # shellcheck disable=SC2046
  sweep "$ds" $(data_args "$ds") "model=${MODELS:-deepfm}" compression=afm_mlp compression.mlp.relu=true \
    compression.mlp.relu_init=shift,plain
  # shellcheck disable=SC2046
  sweep "${ds}_no_relu" $(data_args "$ds") "model=${MODELS:-deepfm}" compression=afm_mlp compression.mlp.relu=false
done
report
