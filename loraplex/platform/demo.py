"""`loraplex demo`: offline generation on a model made locally, to see the engine work."""

from __future__ import annotations

import argparse
import time


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="a Hugging Face model folder (default: a tiny made one)")
    parser.add_argument("--preset", default="tiny", help="preset to make when --model is absent")
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--device", default="auto")


def run_demo(args: argparse.Namespace) -> int:
    from loraplex import LLM, SamplingParams
    from loraplex.modelgen import cached_model

    model = args.model or str(cached_model(args.preset, "llama"))
    print(f"model: {model}")
    llm = LLM(model, device=args.device, max_model_len=1024)
    prompts = ["The quick brown fox", "def fibonacci(n):", "Once upon a time"]
    greedy = SamplingParams(temperature=0, max_tokens=args.max_tokens)
    started = time.perf_counter()
    outputs = llm.generate(prompts, greedy)
    outputs += llm.chat(
        [{"role": "user", "content": "Say hello."}],
        SamplingParams(temperature=0.8, top_p=0.95, seed=0, max_tokens=args.max_tokens),
    )
    seconds = time.perf_counter() - started
    for output in outputs:
        completion = output.outputs[0]
        print(f"\n> {output.prompt or '(chat)'}\n{completion.text!r}  [{completion.finish_reason}]")
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    print(f"\n{tokens} tokens in {seconds:.2f} s ({tokens / seconds:.1f} tokens/s)")
    print("(random weights: the text is gibberish by design; the engine's work is real)")
    return 0
