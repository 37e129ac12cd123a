#!/usr/bin/env bash
# Table 17: AFM against product quantization (PQ) and the QR trick on DeepFM: parameters, test
# AUC and logloss (line 1154-1200; UMEC, the paper's fourth row, is not implemented).
#
#   recipes/table17.sh small                                  # synthetic data (about 5 min on 2 cores)
#   recipes/table17.sh full criteo=/x/train.txt               # the paper's table is Criteo only
#
# Runs compression=afm (ours: MLP, then embeddings), pq_emb (k-means product quantization of the
# trained tables, D = 2 codes per row, 1024 centroids per sub-space, then the codebooks finetune
# with the codes fixed, at lr 1e-4) and qr_emb (quotient-remainder tables with 8 collisions,
# trained from a random start as Shi et al.): the configs' comments say how their settings meet the paper's
# 102.08M / 106.38M. Parameters count PQ's codes, one stored value each, as the paper's count
# must. The baseline row is the uncompressed model of the same runs.
# MODELS=dcn picks another model (default deepfm). Options: out=DIR, -- HYDRA_OVERRIDES (see
# recipes/common.sh).

source "$(dirname "$0")/common.sh"
recipe_init table17 "$@"

for ds in $(datasets); do
  # shellcheck disable=SC2046
  sweep "$ds" $(data_args "$ds") "model=${MODELS:-deepfm}" compression=afm,pq_emb,qr_emb
done
report
