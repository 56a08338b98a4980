"""Log-probabilities in OpenAI's two shapes: completions (parallel lists) and chat (objects).

The engine reports, per generated token, a dict of token id -> logprob holding the sampled
token and the top-k alternatives; the sampled one is looked up by id, the top-k are the k
largest entries (the sampled token is among them only when it ranks there).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class TokenText:
    """Each token's text as the tokenizer decodes it alone (cached: the vocabulary is finite)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._cache: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        text = self._cache.get(token_id)
        if text is None:
            text = self._cache[token_id] = self.tokenizer.decode([token_id])
        return text


def _top(entry: dict[int, float], k: int) -> list[tuple[int, float]]:
    return sorted(entry.items(), key=lambda item: item[1], reverse=True)[:k]


def completion_logprobs(
    token_ids: Sequence[int],
    entries: Sequence[dict[int, float]],
    k: int,
    text_of: TokenText,
    offset: int,
) -> dict[str, Any]:
    """`{tokens, token_logprobs, top_logprobs, text_offset}`; offsets start at `offset`."""
    tokens, token_logprobs, top_logprobs, text_offset = [], [], [], []
    for token_id, entry in zip(token_ids, entries, strict=True):
        text = text_of(token_id)
        tokens.append(text)
        token_logprobs.append(entry[token_id])
        top_logprobs.append({text_of(i): lp for i, lp in _top(entry, k)})
        text_offset.append(offset)
        offset += len(text)
    return {
        "tokens": tokens,
        "token_logprobs": token_logprobs,
        "top_logprobs": top_logprobs,
        "text_offset": text_offset,
    }


def chat_logprobs(
    token_ids: Sequence[int], entries: Sequence[dict[int, float]], k: int, text_of: TokenText
) -> list[dict[str, Any]]:
    """The `content` list of a chat choice's `logprobs`."""
    content = []
    for token_id, entry in zip(token_ids, entries, strict=True):
        text = text_of(token_id)
        content.append(
            {
                "token": text,
                "logprob": entry[token_id],
                "bytes": list(text.encode("utf-8")),
                "top_logprobs": [
                    {"token": text_of(i), "logprob": lp, "bytes": list(text_of(i).encode("utf-8"))}
                    for i, lp in _top(entry, k)
                ],
            }
        )
    return content
