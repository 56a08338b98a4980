"""Scheduler and block manager on synthetic sequences: budgets, chunking, preemption order, and
fair admission of requests for adapters that do not fit in the GPU slots yet."""

import pytest

from loraplex.config import SchedulerConfig
from loraplex.engine.block_manager import BlockManager
from loraplex.engine.scheduler import Scheduler
from loraplex.engine.sequence import Request, Sequence
from loraplex.sampling_params import SamplingParams

_ids = iter(range(10**9))


def make_seq(prompt_len: int, adapter: object | None = None, max_tokens: int = 4) -> Sequence:
    request = Request(
        f"r{next(_ids)}", None, [1] * prompt_len, SamplingParams(max_tokens=max_tokens)
    )
    request.lora_adapter = adapter
    seq = Sequence(next(_ids), request, 0, request.params, None, None)
    request.seqs.append(seq)
    return seq


def run_step(scheduler: Scheduler, finished: list[Sequence]) -> list[Sequence]:
    """Pretend to run the batch: compute tokens, sample one where a step ends, finish at max."""
    batch = scheduler.schedule()
    for seq, num_new in zip(batch.seqs, batch.num_new_tokens, strict=True):
        seq.num_computed_tokens += num_new
        if seq.num_computed_tokens == seq.num_tokens:
            seq.token_ids.append(7)
            if seq.num_output_tokens >= seq.params.max_tokens:
                scheduler.finish(seq)
                finished.append(seq)
    return batch.seqs


def test_budget_chunks_long_prompts_and_decodes_come_first():
    blocks = BlockManager(num_blocks=100, block_size=4)
    scheduler = Scheduler(SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=10), blocks)
    short, long = make_seq(3), make_seq(25)
    scheduler.add(short)
    scheduler.add(long)
    batch = scheduler.schedule()
    assert batch.num_new_tokens == [3, 7]  # the long prompt gets the rest of the budget
    for seq, n in zip(batch.seqs, batch.num_new_tokens, strict=True):
        seq.num_computed_tokens += n
    short.token_ids.append(5)
    batch = scheduler.schedule()
    assert batch.seqs == [short, long] and batch.num_new_tokens == [1, 9]


def test_preemption_takes_the_newest_and_requeues_it_first():
    blocks = BlockManager(num_blocks=4, block_size=4)
    scheduler = Scheduler(SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=64), blocks)
    old, new = make_seq(8, max_tokens=6), make_seq(7, max_tokens=5)
    scheduler.add(old)
    scheduler.add(new)
    finished: list[Sequence] = []
    run_step(scheduler, finished)
    # old needs a third block next: there is none, so new (the last admitted) is preempted.
    for _ in range(3):
        run_step(scheduler, finished)
    assert scheduler.num_preemptions >= 1
    assert scheduler.waiting[0] is new and new.num_computed_tokens == 0 and not new.block_table
    while scheduler.has_unfinished:
        run_step(scheduler, finished)
    assert {s.seq_id for s in finished} == {old.seq_id, new.seq_id}
    assert blocks.num_free_blocks == 4


def test_distinct_adapters_in_a_batch_never_exceed_the_slots():
    blocks = BlockManager(num_blocks=1000, block_size=4)
    scheduler = Scheduler(
        SchedulerConfig(max_num_seqs=64, max_num_batched_tokens=512), blocks, max_loras=2
    )
    adapters = [object() for _ in range(5)]
    for i in range(40):
        scheduler.add(make_seq(5, adapters[i % 5] if i % 3 else None, max_tokens=3 + i % 4))
    finished: list[Sequence] = []
    while scheduler.has_unfinished:
        seqs = run_step(scheduler, finished)
        assert len({s.request.lora_adapter for s in seqs} - {None}) <= 2
    assert len(finished) == 40


def test_blocked_adapter_is_not_starved_by_a_stream_of_resident_adapter_requests():
    blocks = BlockManager(num_blocks=1000, block_size=4)
    scheduler = Scheduler(
        SchedulerConfig(max_num_seqs=64, max_num_batched_tokens=512), blocks, max_loras=1
    )
    hot, cold = object(), object()
    scheduler.add(make_seq(5, hot, max_tokens=5))
    finished: list[Sequence] = []
    run_step(scheduler, finished)
    waiting_cold = make_seq(5, cold, max_tokens=2)
    scheduler.add(waiting_cold)
    base = make_seq(5, None, max_tokens=2)
    for step in range(30):
        scheduler.add(make_seq(5, hot, max_tokens=5))  # hot traffic keeps coming
        if step == 0:
            scheduler.add(base)
        run_step(scheduler, finished)
        if waiting_cold in finished:
            break
    assert waiting_cold in finished, "the request for the non-resident adapter starved"
    assert base in finished, "base-model requests must keep flowing meanwhile"
    assert finished.index(base) < finished.index(waiting_cold)


def test_pinned_adapters_count_against_the_slots():
    blocks = BlockManager(num_blocks=100, block_size=4)
    pinned = object()
    scheduler = Scheduler(
        SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=64),
        blocks,
        max_loras=1,
        reserved_loras=lambda: {pinned},
    )
    other = make_seq(4, object())
    mine = make_seq(4, pinned)
    scheduler.add(other)
    scheduler.add(mine)
    batch = scheduler.schedule()
    assert batch.seqs == [mine]
    assert list(scheduler.waiting) == [other]


def test_block_manager_slots_and_free():
    blocks = BlockManager(num_blocks=3, block_size=4)
    seq = make_seq(6)
    assert blocks.blocks_needed(seq, 6) == 2
    blocks.allocate(seq, 6)
    assert blocks.slot(seq, 5) == seq.block_table[1] * 4 + 1
    assert blocks.usage == pytest.approx(2 / 3)
    seq.num_computed_tokens = 6
    assert not blocks.can_allocate(seq, 7)  # would need 4 blocks in all
    blocks.free(seq)
    assert blocks.num_free_blocks == 3 and seq.block_table == []
