"""Analysis of runs and models: the paper's tables and figures.

Loss-landscape and Hessian-convexity analysis of experts and merged models (paper Fig. 3-5):
`directions` draws the shared random plane, `loss_plane` evaluates the loss on it, `hessian`
computes extreme Hessian eigenvalues and the convexity proxy, `plots` draws the panels,
`summary` replicates the measures over random planes and `landscape_report` ties them to the
Hydra app `analysis/landscape.py`.

Finished runs: `run_folders` is the one reader of run folders (which folders are runs, a run's
settings, its metrics and per-item test results), `stats` the statistics, `table_report` the
tables of `analysis/tables.py` and `mechanism_report` SAE's mechanism over generations
(`analysis/mechanism.py`).
"""
