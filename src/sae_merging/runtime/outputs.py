"""The names of a run folder's files, declared once: the runtime writes them (`runner`, `loop`),
the analysis reads them (`sae_merging.analysis.run_folders`). Imports nothing."""

RESULTS_FILE = "results.json"  # final scores, budget, selection, wall time, config hash
METRICS_FILE = "metrics.jsonl"  # one line per generation
TEST_ITEMS_FILE = "test_items.jsonl"  # the chosen model's correctness on every test item
