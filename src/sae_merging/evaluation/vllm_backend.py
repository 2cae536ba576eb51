"""Fitness through vLLM (`evaluator=vllm`), for GPU users: optional, and only imported here.

Same interface and scoring as BuiltinEvaluator (both are `Evaluator`s: this one supplies
`generate` and `loglikelihoods`): greedy generation cut at the task's stop strings with
lm-eval's answer filters, and multiple choice by the summed log-probability of each choice
given the prompt (lm-eval's token split, `encode_pair`). vLLM batches and pages the
KV cache itself, which pays off for large models and long generations on a GPU.

How vLLM gets an individual's weights: vLLM loads models from a folder, not from a torch
module. The first evaluation saves the model it is given (the individual's weights, already
loaded by FitnessEvaluator) as a Hugging Face folder in a temporary directory and starts one
vLLM engine on it. When a later evaluation brings other weights (seen by a per-tensor checksum
of the model), they are written over that folder's safetensors and loaded into the running
engine with `LLM.collective_rpc` (each worker calls its model's `load_weights`), and the prefix
cache is reset; vLLM versions without that path get a fresh engine instead (slow: seconds to
minutes per individual). Results can differ from the HF evaluators by kernel numerics (bf16
GPU kernels); greedy decoding keeps them deterministic for a given setup.

Not run by the tests (no GPU, no vLLM here): only the import guard is.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from sae_merging.evaluation.builtin import Evaluator, cut_at_stops
from sae_merging.evaluation.settings import VllmSettings
from sae_merging.models.io import tied_aliases
from sae_merging.tasks.base import TaskData
from sae_merging.utils.tensorfiles import TensorFile, write_tensors

INSTALL_HINT = (
    "evaluator=vllm needs vLLM, which runs on CUDA GPUs: `pip install vllm` (see "
    "https://docs.vllm.ai), or use evaluator=builtin"
)
WEIGHTS_FILE = "model.safetensors"
log = logging.getLogger(__name__)


def _load_weights(worker, path: str) -> None:
    """Run on every vLLM worker: load the tensors of `path` into its model."""
    with TensorFile(path) as file:
        worker.model_runner.model.load_weights((name, file.get(name)) for name in file.names())


class VllmEvaluator(Evaluator, VllmSettings):
    """Scores examples with vLLM; see the module docstring. `batch_size` caps the sequences
    vLLM runs at once (its `max_num_seqs`), `max_length` its context (`max_model_len`); the
    arguments are `VllmSettings`."""

    name = "vllm"

    def __post_init__(self) -> None:
        super().__post_init__()  # checks
        try:
            import vllm  # noqa: F401
        except ImportError as error:
            raise ImportError(INSTALL_HINT) from error
        self.engine_kwargs = {
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "max_model_len": self.max_length,
            "max_num_seqs": self.batch_size,
            "dtype": self.dtype,
        }
        self._folder: tempfile.TemporaryDirectory | None = None
        self._llm = None
        self._checksum: torch.Tensor | None = None

    # --- the engine and the individual's weights --------------------------------------------

    def _engine(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase):
        """The engine, holding `model`'s current weights."""
        checksum = torch.stack([p.detach().float().sum() for p in model.state_dict().values()]).cpu()
        if self._llm is not None and self._checksum is not None and torch.equal(checksum, self._checksum):
            return self._llm
        if self._folder is None:
            self._folder = tempfile.TemporaryDirectory(prefix="sae-merging-vllm-")
            model.config.save_pretrained(self._folder.name)
            tokenizer.save_pretrained(self._folder.name)
        path = Path(self._folder.name) / WEIGHTS_FILE
        aliases = tied_aliases(model.config)  # tied copies are not saved; vLLM ties them again
        write_tensors(path, ((k, v) for k, v in model.state_dict().items() if k not in aliases))
        if self._llm is None or not self._reload(str(path)):
            self._start()
        self._checksum = checksum
        return self._llm

    def _reload(self, path: str) -> bool:
        """Load new weights into the running engine; False when this vLLM cannot."""
        try:
            self._llm.collective_rpc(_load_weights, args=(path,))
            self._llm.reset_prefix_cache()
            return True
        except (AttributeError, TypeError, NotImplementedError) as error:
            log.warning("vLLM cannot reload weights in place (%s); starting a new engine", error)
            return False

    def _start(self) -> None:
        from vllm import LLM

        self._llm = None  # release the old engine's memory first
        torch.cuda.empty_cache()
        self._llm = LLM(model=self._folder.name, seed=0, **self.engine_kwargs)

    # --- scoring (Evaluator.evaluate and .choose call these) ---------------------------------

    def generate(self, model, tokenizer, prompts: Sequence[str], task: TaskData) -> list[str]:
        from vllm import SamplingParams

        llm = self._engine(model, tokenizer)
        stops = list(task.stop) + ([tokenizer.eos_token] if tokenizer.eos_token else [])
        params = SamplingParams(temperature=0.0, max_tokens=task.max_new_tokens, stop=stops)
        results = llm.generate(list(prompts), params, use_tqdm=self.progress)
        return [cut_at_stops(r.outputs[0].text, stops) for r in results]

    def loglikelihoods(
        self, model, tokenizer, requests: Sequence[tuple[list[int], list[int]]]
    ) -> list[float]:
        """Summed log-probability of each continuation, from vLLM's prompt log-probabilities."""
        from vllm import SamplingParams, TokensPrompt

        llm = self._engine(model, tokenizer)
        prompts = [
            TokensPrompt(prompt_token_ids=context + continuation) for context, continuation in requests
        ]
        params = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=0)
        results = llm.generate(prompts, params, use_tqdm=self.progress)
        scores = []
        for (context, continuation), result in zip(requests, results, strict=True):
            tokens = context + continuation
            logprobs = result.prompt_logprobs  # one dict per prompt token (None for the first)
            scores.append(sum(logprobs[i][tokens[i]].logprob for i in range(len(context), len(tokens))))
        return scores
