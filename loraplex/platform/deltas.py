"""What is new in each choice since the last streamed chunk.

The engine's outputs are cumulative; a stream sends only the text and tokens added since the
previous chunk of the same choice. Choice `index` numbers run over prompts, then samples:
prompt p's sample s is choice `p * n + s`, as in OpenAI's API.
"""

from __future__ import annotations

from dataclasses import dataclass

from loraplex.outputs import RequestOutput


@dataclass
class ChoiceDelta:
    index: int
    text: str
    token_ids: list[int]
    logprobs: list[dict[int, float]] | None
    finish_reason: str | None
    first: bool  # the choice's first chunk


@dataclass
class _Progress:
    text_sent: int = 0
    tokens_sent: int = 0
    started: bool = False
    finished: bool = False


class ChoiceTracker:
    def __init__(self, n: int) -> None:
        self.n = n
        self._progress: dict[int, _Progress] = {}

    def deltas(self, prompt_index: int, output: RequestOutput) -> list[ChoiceDelta]:
        found = []
        for choice in output.outputs:
            index = prompt_index * self.n + choice.index
            progress = self._progress.setdefault(index, _Progress())
            if progress.finished:
                continue
            # Text held back while it might start a stop string only ever grows back.
            text = choice.text[progress.text_sent :]
            new_tokens = choice.token_ids[progress.tokens_sent :]
            logprobs = None
            if choice.logprobs is not None:
                logprobs = choice.logprobs[progress.tokens_sent : len(choice.token_ids)]
            first = not progress.started
            progress.started = True
            progress.text_sent = max(progress.text_sent, len(choice.text))
            progress.tokens_sent = len(choice.token_ids)
            progress.finished = choice.finish_reason is not None
            if text or new_tokens or progress.finished or first:
                found.append(
                    ChoiceDelta(index, text, new_tokens, logprobs, choice.finish_reason, first)
                )
        return found
