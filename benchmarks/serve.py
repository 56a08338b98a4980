"""Online serving benchmark: the real server, many uploaded adapters, streaming clients.

Starts `loraplex serve` on the preset with --slots GPU LoRA slots, uploads --adapters adapters
(rank --rank on all seven projections) through the REST API into a local object store, then
sends streaming completions with Poisson arrivals at --rate requests/s for --duration seconds
(prompt and output lengths drawn from a seeded distribution, adapters chosen uniformly or with
Zipf popularity). Prints throughput, TTFT and TPOT percentiles, and the TTFT of each adapter's
first request (the adapter only in the object store: download, validation, CPU and GPU loads)
beside the TTFT of the requests that found it warm.

    python benchmarks/serve.py --adapters 128 --slots 16 --rate 4 --duration 60
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from bench_common import ensure_model, record, table
from lora_throughput import write_adapter


@dataclass
class Result:
    adapter: int
    cold: bool  # the adapter's first request
    ttft: float  # seconds to the first streamed token
    tpot: float | None  # seconds per output token after the first
    tokens: int
    ok: bool


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(
    model_dir: str, data_dir: str, port: int, admin_key: str, args
) -> subprocess.Popen:
    env = dict(os.environ)
    env.update(
        {
            "LORAPLEX_ADMIN_KEY": admin_key,
            "LORAPLEX_MAX_LORAS": str(args.slots),
            "LORAPLEX_MAX_CPU_LORAS": str(max(args.slots, args.cpu_loras)),
            "LORAPLEX_MAX_LORA_RANK": str(args.rank),
            "LORAPLEX_MAX_NUM_SEQS": str(args.max_num_seqs),
            "LORAPLEX_MAX_WAITING_REQUESTS": "100000",
        }
    )
    launcher = "import sys; from loraplex.platform.cli import main; sys.exit(main(sys.argv[1:]))"
    command = [
        sys.executable,
        "-c",
        launcher,
        "serve",
        "--model",
        model_dir,
        "--port",
        str(port),
        "--data-dir",
        data_dir,
        "--log-level",
        "warning",
    ]
    return subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL)


async def wait_ready(url: str, process: subprocess.Popen, timeout: float = 900) -> None:
    async with httpx.AsyncClient() as client:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited with {process.returncode}")
            try:
                if (await client.get(f"{url}/health")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(1)
    raise TimeoutError("the server did not become healthy")


async def setup_tenant(
    url: str, admin_key: str, folders: list[Path], count: int
) -> tuple[str, str]:
    """A tenant with `count` uploaded adapters: (its key, the base model's served name)."""
    admin = {"Authorization": f"Bearer {admin_key}"}
    async with httpx.AsyncClient(timeout=600) as client:
        tenant = (
            await client.post(f"{url}/admin/v1/tenants", json={"name": "bench"}, headers=admin)
        ).json()
        key = (
            await client.post(f"{url}/admin/v1/tenants/{tenant['id']}/keys", json={}, headers=admin)
        ).json()["key"]
        auth = {"Authorization": f"Bearer {key}"}
        for i in range(count):
            folder = folders[i % len(folders)]
            files = [
                ("files", ("adapter_config.json", (folder / "adapter_config.json").read_bytes())),
                (
                    "files",
                    (
                        "adapter_model.safetensors",
                        (folder / "adapter_model.safetensors").open("rb"),
                    ),
                ),
            ]
            response = await client.post(
                f"{url}/v1/adapters", data={"name": f"a{i}"}, files=files, headers=auth
            )
            response.raise_for_status()
        models = (await client.get(f"{url}/v1/models", headers=auth)).json()["data"]
    return key, next(m["id"] for m in models if not m.get("parent"))


async def one_request(client, url, key, model, adapter, prompt, max_tokens, cold) -> Result:
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
    }
    started = time.perf_counter()
    first = None
    tokens = 0
    try:
        async with client.stream(
            "POST", f"{url}/v1/completions", json=body, headers={"Authorization": f"Bearer {key}"}
        ) as response:
            if response.status_code != 200:
                return Result(adapter, cold, 0.0, None, 0, False)
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                if json.loads(line[6:])["choices"]:
                    tokens += 1
                    first = first or time.perf_counter()
    except httpx.HTTPError:
        return Result(adapter, cold, 0.0, None, 0, False)
    end = time.perf_counter()
    if first is None:
        return Result(adapter, cold, 0.0, None, 0, False)
    tpot = (end - first) / (tokens - 1) if tokens > 1 else None
    return Result(adapter, cold, first - started, tpot, tokens, True)


def choose_adapter(rng: random.Random, count: int, zipf: float) -> int:
    if zipf <= 0:
        return rng.randrange(count)
    weights = [1 / (rank + 1) ** zipf for rank in range(count)]
    return rng.choices(range(count), weights)[0]


async def drive(url: str, key: str, base: str, vocab: int, args) -> tuple[list, float]:
    rng = random.Random(args.seed)
    seen: set[int] = set()
    tasks = []
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        started = time.perf_counter()
        while time.perf_counter() - started < args.duration:
            adapter = choose_adapter(rng, args.adapters, args.zipf) if args.adapters else -1
            model = f"a{adapter}" if adapter >= 0 else base
            cold = adapter >= 0 and adapter not in seen
            seen.add(adapter)
            prompt_len = max(8, int(rng.gauss(args.prompt_len, args.prompt_len / 4)))
            out_len = max(4, int(rng.gauss(args.output_len, args.output_len / 4)))
            prompt = [rng.randrange(5, vocab) for _ in range(prompt_len)]
            tasks.append(
                asyncio.create_task(
                    one_request(client, url, key, model, adapter, prompt, out_len, cold)
                )
            )
            await asyncio.sleep(rng.expovariate(args.rate))
        results = await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - started
    return results, elapsed


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="/tmp/loraplex-llama3-8b")
    parser.add_argument("--preset", default="llama3-8b")
    parser.add_argument("--adapters", type=int, default=128)
    parser.add_argument("--distinct-files", type=int, default=8)
    parser.add_argument("--slots", type=int, default=16)
    parser.add_argument("--cpu-loras", type=int, default=32)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--rate", type=float, default=4.0, help="requests per second")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of arrivals")
    parser.add_argument("--zipf", type=float, default=1.1, help="0: uniform popularity")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    model_dir = ensure_model(args.preset, args.model)
    config = json.loads((Path(model_dir) / "config.json").read_text())
    folders = [
        write_adapter(
            Path(model_dir + "-adapters") / f"r{args.rank}-{i}", config, args.rank, seed=i
        )
        for i in range(args.distinct_files)
    ]
    port, admin_key = free_port(), "lpx_" + secrets.token_urlsafe(32)
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as data_dir:
        server = start_server(model_dir, data_dir, port, admin_key, args)
        try:
            asyncio.run(wait_ready(url, server))
            key, base = asyncio.run(setup_tenant(url, admin_key, folders, args.adapters))
            results, elapsed = asyncio.run(drive(url, key, base, config["vocab_size"], args))
        finally:
            server.terminate()
            server.wait(timeout=60)
    done = [r for r in results if r.ok]
    tokens = sum(r.tokens for r in done)
    cold = [r.ttft for r in done if r.cold]
    warm = [r.ttft for r in done if not r.cold]
    tpot = [r.tpot for r in done if r.tpot is not None]
    ms = lambda v: f"{v * 1e3:.0f}"  # noqa: E731
    rows = [
        ["requests (ok / sent)", f"{len(done)} / {len(results)}"],
        ["throughput (generated tok/s)", f"{tokens / elapsed:.1f}"],
        [
            "TTFT p50 / p99 (ms), all",
            f"{ms(percentile([r.ttft for r in done], 0.5))} / "
            f"{ms(percentile([r.ttft for r in done], 0.99))}",
        ],
        ["TTFT p50 (ms), warm adapter", ms(percentile(warm, 0.5))],
        [
            "TTFT p50 (ms), cold adapter (store only)",
            f"{ms(percentile(cold, 0.5))} ({len(cold)} requests)",
        ],
        ["TPOT p50 / p99 (ms)", f"{ms(percentile(tpot, 0.5))} / {ms(percentile(tpot, 0.99))}"],
    ]
    body = (
        f"{args.preset}, {args.adapters} adapters (rank {args.rank}, all projections) over "
        f"{args.slots} GPU slots, Poisson arrivals at {args.rate} req/s for {args.duration:.0f} s, "
        f"{'Zipf ' + str(args.zipf) if args.zipf > 0 else 'uniform'} popularity, prompt "
        f"~{args.prompt_len} / output ~{args.output_len} tokens, streaming\n\n"
        + table(["measure", "value"], rows)
    )
    record("Online serving", body)


if __name__ == "__main__":
    main()
