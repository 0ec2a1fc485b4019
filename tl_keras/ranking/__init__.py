"""Scores that rank source models for a target before any finetuning, one score a module
(logme, leep, nce, hscore, knn), each a NumPy function of features or source predictions and
target labels (higher: the source suits the target better); `rank.rank_sources` applies them
all to candidate models."""
