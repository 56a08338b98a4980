"""Incremental detokenization: the text each new token adds to a sequence's output."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

# Prompt tokens decoded as context for the first output tokens, as vLLM does, so a decoder that
# strips a leading space at the start of a text keeps the space that follows the prompt.
PROMPT_CONTEXT_TOKENS = 5
REPLACEMENT_CHARACTER = "\ufffd"


class IncrementalDetokenizer:
    """Streams a sequence's output text one token at a time.

    Concatenating every `add_token` result and the final `flush()` gives
    `tokenizer.decode(output_ids, skip_special_tokens=..., clean_up_tokenization_spaces=False)`
    for byte-level tokenizers. A token that ends inside a multi-byte UTF-8 character adds no text
    until a later token completes it (its decode would end in U+FFFD).

    Each step decodes only the tokens since the last emitted text plus the tokens emitted then
    (vLLM's prefix and read offsets), so the cost per token does not grow with the output.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerFast,
        prompt_token_ids: Sequence[int],
        skip_special_tokens: bool = True,
    ) -> None:
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise ValueError(
                f"{type(tokenizer).__name__} is not a fast tokenizer; "
                "incremental detokenization needs a `tokenizers`-backed PreTrainedTokenizerFast"
            )
        self._backend = backend
        self._skip_special_tokens = skip_special_tokens
        context = list(prompt_token_ids[-PROMPT_CONTEXT_TOKENS:])
        context_text = self._decode(context)
        if context_text.endswith(REPLACEMENT_CHARACTER):
            # The prompt ends inside a character: output bytes must not complete it.
            context, context_text = [], ""
        # `_window[:_read_offset]` decoded to `_prefix_text` and was already emitted (or is
        # prompt context); tokens after it are held until they decode to complete characters.
        self._window = context
        self._read_offset = len(context)
        self._prefix_text = context_text

    def _decode(self, token_ids: list[int]) -> str:
        return self._backend.decode(token_ids, skip_special_tokens=self._skip_special_tokens)

    def add_token(self, token_id: int) -> str:
        """Append one generated token; return the text it completes (often '', never partial)."""
        self._window.append(token_id)
        text = self._decode(self._window)
        if len(text) <= len(self._prefix_text) or text.endswith(REPLACEMENT_CHARACTER):
            return ""
        return self._emit(text)

    def flush(self) -> str:
        """Text still held back (an incomplete character at the end); call when the output ends."""
        if self._read_offset == len(self._window):
            return ""
        text = self._decode(self._window)
        if len(text) <= len(self._prefix_text):
            return ""
        return self._emit(text)

    def _emit(self, text: str) -> str:
        new_text = text[len(self._prefix_text) :]
        # The tokens just emitted become the next step's context; older ones are never needed.
        self._window = self._window[self._read_offset :]
        self._read_offset = len(self._window)
        self._prefix_text = self._decode(self._window)
        return new_text
