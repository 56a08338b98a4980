"""The engine loop: requests in, one scheduled batch per `step()`, outputs out.

`LLM` (offline) and `AsyncLLMEngine` (server) both drive this loop.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loraplex.config import EngineConfig
from loraplex.engine.args import EngineArgs
from loraplex.engine.block_manager import BlockManager
from loraplex.engine.detokenizer import IncrementalDetokenizer
from loraplex.engine.lora.adapter import LoRAAdapter
from loraplex.engine.lora.manager import LoRAManager
from loraplex.engine.parallel.executor import create_executor
from loraplex.engine.sampler import PendingSample, Sampler
from loraplex.engine.sampling_batch import SamplingBatch, make_generator
from loraplex.engine.scheduler import ScheduledBatch, Scheduler
from loraplex.engine.sequence import Request, Sequence, SequenceStatus
from loraplex.engine.stop_checker import check_stop, stop_string_holdback
from loraplex.lora_request import LoRARequest
from loraplex.outputs import CompletionOutput, RequestOutput
from loraplex.sampling_params import RequestOutputKind, SamplingParams

logger = logging.getLogger(__name__)

PromptType = str | list[int] | dict[str, Any]


@dataclass(frozen=True)
class EngineStats:
    num_running: int  # sequences holding KV blocks
    num_waiting: int  # sequences queued (new or preempted)
    kv_cache_usage: float  # fraction of KV blocks in use
    num_kv_blocks: int
    num_preemptions: int  # since start


class LLMEngine:
    def __init__(self, config: EngineConfig) -> None:
        from transformers import AutoTokenizer

        self.config = config
        model_cfg = config.model
        self.tokenizer = AutoTokenizer.from_pretrained(
            model_cfg.tokenizer, trust_remote_code=model_cfg.trust_remote_code
        )
        # Runs the model: in this process, or sharded over worker processes too (TP > 1).
        self.executor = create_executor(config)
        self.model_runner = self.executor.runner  # this process's shard
        self.block_manager = BlockManager(self.executor.num_blocks, config.cache.block_size)
        self.lora_manager: LoRAManager | None = None
        if config.lora is not None:
            self.lora_manager = LoRAManager(
                config.lora,
                model_cfg.hf_config,
                model_cfg.dtype,
                self.executor.device,
                self.executor.write_lora_slot,
            )
            self.scheduler = Scheduler(
                config.scheduler,
                self.block_manager,
                max_loras=config.lora.max_loras,
                reserved_loras=self.lora_manager.pinned_resident,
            )
        else:
            self.scheduler = Scheduler(config.scheduler, self.block_manager)
        self.eos_token_ids = _eos_token_ids(self.tokenizer, model_cfg.model)
        self.sampler = Sampler(model_cfg.vocab_size, self.eos_token_ids)
        self.requests: dict[str, Request] = {}
        self._seq_ids = itertools.count()
        self._in_flight: _Launched | None = None  # a launched step not yet read (async)

    @classmethod
    def from_engine_args(cls, args: EngineArgs) -> LLMEngine:
        return cls(args.create_engine_config())

    def shutdown(self) -> None:
        """Stop the tensor-parallel workers, if any (also done at exit); idempotent."""
        self.executor.shutdown()

    @property
    def max_model_len(self) -> int:
        return self.config.scheduler.max_model_len

    # ---- requests -------------------------------------------------------------------------

    def add_request(
        self,
        request_id: str,
        prompt: PromptType,
        params: SamplingParams | None = None,
        lora_request: LoRARequest | None = None,
        arrival_time: float | None = None,
    ) -> None:
        """Queue a request. Raises ValueError (and changes nothing) if it is malformed."""
        if request_id in self.requests:
            raise ValueError(f"request id {request_id!r} is already in use")
        self.enqueue(self.make_request(request_id, prompt, params, lora_request, arrival_time))

    def make_request(
        self,
        request_id: str,
        prompt: PromptType,
        params: SamplingParams | None = None,
        lora_request: LoRARequest | None = None,
        arrival_time: float | None = None,
    ) -> Request:
        """Validate and tokenize a request without touching engine state (any thread may)."""
        params = params if params is not None else SamplingParams()
        if not isinstance(params, SamplingParams):
            raise ValueError(f"params must be a SamplingParams, got {type(params).__name__}")
        text, token_ids = self._tokenize(prompt)
        request = Request(request_id, text, token_ids, params, lora_request, arrival_time)
        if lora_request is not None:
            request.lora_adapter = self._lora(lora_request)
        for index in range(params.n):
            sample_params = params.for_sample(index) if params.n > 1 else params
            seed = sample_params.seed
            generator = None if seed is None else make_generator(seed, self.executor.device)
            detokenizer = IncrementalDetokenizer(
                self.tokenizer, token_ids, skip_special_tokens=params.skip_special_tokens
            )
            request.seqs.append(
                Sequence(next(self._seq_ids), request, index, sample_params, generator, detokenizer)
            )
        return request

    def enqueue(self, request: Request) -> None:
        if request.request_id in self.requests:
            raise ValueError(f"request id {request.request_id!r} is already in use")
        self.requests[request.request_id] = request
        for seq in request.seqs:
            self.scheduler.add(seq)

    def _tokenize(self, prompt: PromptType) -> tuple[str | None, list[int]]:
        if isinstance(prompt, dict):
            if "prompt_token_ids" in prompt:
                prompt = list(prompt["prompt_token_ids"])
            elif "prompt" in prompt:
                prompt = prompt["prompt"]
            else:
                raise ValueError("a prompt dict needs a 'prompt' or 'prompt_token_ids' key")
        if isinstance(prompt, str):
            if not prompt:
                raise ValueError("the prompt is empty")
            text, token_ids = prompt, self.tokenizer(prompt).input_ids
        elif isinstance(prompt, list | tuple):
            text, token_ids = None, list(prompt)
            if not all(isinstance(t, int) and not isinstance(t, bool) for t in token_ids):
                raise ValueError("a token-id prompt must be a list of ints")
        else:
            raise ValueError(f"a prompt must be a string or a list of token ids, got {prompt!r}")
        if not token_ids:
            raise ValueError("the prompt is empty")
        vocab = self.config.model.vocab_size
        bad = [t for t in token_ids if not 0 <= t < vocab]
        if bad:
            raise ValueError(f"prompt token ids {bad[:5]} are outside the vocabulary [0, {vocab})")
        if len(token_ids) >= self.max_model_len:
            raise ValueError(
                f"the prompt has {len(token_ids)} tokens, but max_model_len is "
                f"{self.max_model_len} (prompt plus at least one generated token must fit)"
            )
        return text, token_ids

    # ---- adapters (vLLM's names) ----------------------------------------------------------

    def _require_lora(self) -> LoRAManager:
        if self.lora_manager is None:
            raise ValueError(
                "a LoRA adapter was requested but the engine runs with enable_lora=False"
            )
        return self.lora_manager

    def _lora(self, lora_request: LoRARequest) -> LoRAAdapter:
        if not isinstance(lora_request, LoRARequest):
            raise ValueError(f"lora_request must be a LoRARequest, got {lora_request!r}")
        return self._require_lora().get(lora_request)

    def add_lora(self, lora_request: LoRARequest) -> bool:
        """Load an adapter into CPU memory ahead of use; False if it was there already."""
        if not isinstance(lora_request, LoRARequest):
            raise ValueError(f"lora_request must be a LoRARequest, got {lora_request!r}")
        return self._require_lora().add(lora_request)

    def remove_lora(self, lora_int_id: int) -> bool:
        """Forget an adapter. Requests already using it finish with it unchanged."""
        return self._require_lora().remove(lora_int_id, set(self.scheduler.running_loras))

    def list_loras(self) -> set[int]:
        return self._require_lora().list_ids()

    def pin_lora(self, lora_int_id: int) -> bool:
        """Keep a known adapter in a GPU slot for good; False if the id is unknown."""
        return self._require_lora().pin(lora_int_id, set(self.scheduler.running_loras))

    def abort_request(self, request_id: str | Iterable[str]) -> None:
        ids = [request_id] if isinstance(request_id, str) else list(request_id)
        for rid in ids:
            request = self.requests.pop(rid, None)
            if request is None:
                continue
            for seq in request.seqs:
                if not seq.status.is_finished:
                    seq.finish(SequenceStatus.FINISHED_ABORTED, "abort", None)
                    self.scheduler.finish(seq)

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    def get_num_unfinished_requests(self) -> int:
        return len(self.requests)

    def stats(self) -> EngineStats:
        scheduler = self.scheduler
        return EngineStats(
            num_running=len(scheduler.running),
            num_waiting=len(scheduler.waiting),
            kv_cache_usage=self.block_manager.usage,
            num_kv_blocks=self.block_manager.num_blocks,
            num_preemptions=scheduler.num_preemptions,
        )

    # ---- the loop -------------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        """Run one batch; return the outputs (of each request's `output_kind`) of the
        requests that advanced.

        With async scheduling the batch is launched before the previous step's tokens are
        read: those reach the next step's input on the device (and its penalties and
        min_tokens bans), and the host detokenizes and checks stops while the GPU runs.
        Outputs then trail the GPU by one step, and a sequence that stopped costs one
        discarded token."""
        batch = self.scheduler.schedule()
        outputs: list[RequestOutput] = []
        previous = self._in_flight
        # Should the launch fail, the step in flight stays there to be read.
        launched = None if batch.is_empty else self._launch(batch, previous)
        self._in_flight = None
        if previous is not None:
            outputs += self._finish(previous)
        if launched is not None:
            if self.config.scheduler.async_scheduling:
                self._in_flight = launched
            else:
                outputs += self._finish(launched)
        return outputs

    def flush(self) -> list[RequestOutput]:
        """Read the step in flight, if any, and return its outputs: afterwards every
        sequence's tokens are on the host (for callers that drive the model directly)."""
        launched, self._in_flight = self._in_flight, None
        return self._finish(launched) if launched is not None else []

    def _launch(self, batch: ScheduledBatch, previous: _Launched | None) -> _Launched:
        """Queue the batch's forward pass and sampling on the device."""
        lora_slots = None
        if self.lora_manager is not None:
            needed = {seq.request.lora_adapter for seq in batch.seqs} - {None}
            if needed:
                in_use = set(self.scheduler.running_loras)
                lora_slots = self.lora_manager.activate(needed, in_use)
        pending = previous.sample.token_ids if previous is not None and previous.sample else None
        logits = self.executor.execute(batch, lora_slots, pending)
        sampling: list[Sequence] = []
        for seq, num_new in zip(batch.seqs, batch.num_new_tokens, strict=True):
            seq.num_computed_tokens += num_new
            if seq.num_computed_tokens == seq.num_tokens:
                sampling.append(seq)
        if not sampling:
            return _Launched([], None)
        sample = self.sampler.sample(
            logits,
            SamplingBatch(
                params=[seq.params for seq in sampling],
                prompt_token_ids=[seq.request.prompt_array for seq in sampling],
                output_token_ids=[seq.output_token_ids for seq in sampling],
                generators=[seq.generator for seq in sampling],
                pending_rows=[seq.pending_row if seq.num_pending else -1 for seq in sampling],
                pending_tokens=pending,
            ),
        )
        for row, seq in enumerate(sampling):
            seq.num_pending += 1
            seq.pending_row = row
        return _Launched(sampling, sample)

    def _finish(self, launched: _Launched) -> list[RequestOutput]:
        """Read a launched step's tokens and advance its sequences."""
        if launched.sample is None:
            return []
        result = launched.sample.result()
        touched: dict[str, Request] = {}
        for row, seq in enumerate(launched.sampling):
            seq.num_pending -= 1
            if seq.status.is_finished:  # stopped or aborted while this step ran: discarded
                continue
            self._advance(
                seq, result.token_ids[row], result.logprobs[row], result.top_logprobs[row]
            )
            touched[seq.request.request_id] = seq.request
        outputs = []
        for request in touched.values():
            final_only = request.params.output_kind is RequestOutputKind.FINAL_ONLY
            if request.is_finished or not final_only:
                outputs.append(self._output(request))
        return outputs

    def _advance(self, seq: Sequence, token_id: int, logprob: float, top: dict | None) -> None:
        seq.append_token(token_id, logprob, top)
        new_text = seq.detokenizer.add_token(token_id)
        seq.text += new_text
        decision = check_stop(
            output_token_ids=seq.output_token_ids,
            output_text=seq.text,
            new_char_count=len(new_text),
            params=seq.params,
            eos_token_ids=self.eos_token_ids,
            seq_len=len(seq.token_ids),
            max_model_len=self.max_model_len,
        )
        if decision is None:
            return
        if decision.truncate_to is not None:
            seq.text = seq.text[: decision.truncate_to]
        else:
            seq.text += seq.detokenizer.flush()  # an incomplete character held back at the end
        status = (
            SequenceStatus.FINISHED_LENGTH
            if decision.finish_reason == "length"
            else SequenceStatus.FINISHED_STOPPED
        )
        seq.finish(status, decision.finish_reason, decision.stop_reason)
        self.scheduler.finish(seq)

    def _output(self, request: Request) -> RequestOutput:
        finished = request.is_finished
        if finished:
            self.requests.pop(request.request_id, None)
        delta = request.params.output_kind is RequestOutputKind.DELTA
        completions = []
        for seq in request.seqs:
            text = seq.text
            if not seq.status.is_finished:
                text = text[: len(text) - stop_string_holdback(text, seq.params.stop)]
            tokens, logprobs = seq.output_token_ids, seq.logprobs
            if delta:  # only what the request's earlier outputs did not carry
                text, seq.sent_chars = text[seq.sent_chars :], len(text)
                first, seq.sent_tokens = seq.sent_tokens, len(tokens)
                tokens = tokens[first:]
                logprobs = logprobs[first:] if logprobs is not None else None
            completions.append(
                CompletionOutput(
                    index=seq.index,
                    text=text,
                    token_ids=list(tokens),
                    cumulative_logprob=seq.cumulative_logprob,
                    logprobs=list(logprobs) if logprobs is not None else None,
                    finish_reason=seq.finish_reason,
                    stop_reason=seq.stop_reason,
                )
            )
        return RequestOutput(
            request_id=request.request_id,
            prompt=request.prompt,
            prompt_token_ids=request.prompt_token_ids,
            outputs=completions,
            finished=finished,
        )


@dataclass
class _Launched:
    """A step queued on the device whose sampled tokens the host has not read yet."""

    sampling: list[Sequence]  # the sequences that sample, in the rows of `sample`
    sample: PendingSample | None  # None when no sequence samples (prompt chunks only)


def _eos_token_ids(tokenizer: Any, model_dir: str) -> set[int]:
    """EOS ids of the tokenizer and of generation_config.json (which may list several)."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    generation_config = Path(model_dir) / "generation_config.json"
    if generation_config.is_file():
        eos = json.loads(generation_config.read_text()).get("eos_token_id")
        if isinstance(eos, int):
            ids.add(eos)
        elif isinstance(eos, list):
            ids.update(e for e in eos if isinstance(e, int))
    return ids
