#!/usr/bin/env bash
# Table 11: principal components needed for 90 / 95 / 99 % of the output variance of each MLP
# layer of the trained baseline, for the seven models; PNG of the components per threshold.
#
#   recipes/table11.sh small                                  # synthetic data (about 6 min on 2 cores)
#   recipes/table11.sh full criteo=/x/train.txt avazu=/x/train.csv
#
# Per model: one baseline epoch, then an AFM stage on all three MLP Linears whose statistics
# pass measures the spectra (compression=afm_mlp with compression.mlp.targets=[mlp.*.linear],
# no finetune, no evaluations). Its rank (16, what NFM's first layer allows) only shapes the
# swapped model, which nothing uses; the table reads the statistics. MODELS=deepfm,dcn picks models.
# Options: out=DIR, -- HYDRA_OVERRIDES (see recipes/common.sh).

source "$(dirname "$0")/common.sh"
recipe_init table11 "$@"

for ds in $(datasets); do
  # shellcheck disable=SC2046
  sweep "$ds" $(data_args "$ds") "model=${MODELS:-dcn,deepfm,nfm,autoint,fibinet,dcnv2,gdcn}" compression=afm_mlp \
    'compression.mlp.targets=[mlp.*.linear]' compression.mlp.rank=16 compression.mlp.epochs=0 \
    'compression.eval_splits=[]' trainer.max_epochs=1
done
report
