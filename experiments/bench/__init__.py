"""The benchmark's measurements, one module each, behind one command
(`experiments/benchmark.py`): `merge_passes` (1), `pruning` (2), `evaluators` (3 and
`evaluator`), `generation` (4), `commands` (5), `threads` (6); `common` holds what they share
(the synthetic checkpoints, timing and memory helpers, the table's rows)."""
