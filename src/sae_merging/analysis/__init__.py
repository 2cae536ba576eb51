"""Loss-landscape and Hessian-convexity analysis of experts and merged models (paper Fig. 3-5).

`directions` draws the shared random plane, `landscape` evaluates the loss on it, `hessian`
computes extreme Hessian eigenvalues and the convexity proxy, `plots` draws the panels and
`runner` ties them to the Hydra app `analysis/landscape.py`.
"""
