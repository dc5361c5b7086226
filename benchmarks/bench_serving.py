"""Serving throughput and latency under concurrent users (BENCHMARKS.md, "Serving"):
- `tinygpt serve` with OpenAI clients: one request after another (--max-batch 1) against requests decoded together
  (each --max_batches value), for a trained model and the seed shape, with the same weights served as
  transformers' own GPTNeoForCausalLM (`tinygpt export gpt-neo`) as the baseline;
- the Gradio playground (`tinygpt app`) with Gradio clients: one visitor at a time (--max-batch 1, the queue as it
  was) against visitors decoded together (the default).

    python benchmarks/bench_serving.py --model runs/cpu --out docs/bench/serving.json   # ~15 minutes here

For each served model and each concurrency C in --concurrency: C clients at once, each sending --per_client
completions of --max_tokens tokens one after another (prompt "Once upon a time", temperature 1, a seed per
request); latency is each request's wall time at the client, throughput the generated tokens over the level's
wall time. "seed" is the 41M seed shape with random weights (the trained model's tokenizer; the end-of-text
token is as rare as any other, so it rarely stops early); the trained model stops where its story ends.
"""

import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from transformers import AutoTokenizer, HfArgumentParser

from tinygpt import TinyGPTConfig, TinyGPTForCausalLM
from tinygpt.convert import export_gpt_neo
from processes import free_port, running_server  # benchmarks/ is on the path when this file runs as a script
from tinygpt.throughput import machine


@dataclass
class Args:
    model: str = field(default="runs/cpu", metadata={"help": "a trained TinyGPT folder (its tokenizer also serves "
                                                             "the seed shape)"})
    concurrency: str = field(default="1,4,8,16", metadata={"help": "clients at once, comma-separated"})
    max_batches: str = field(default="1,8,16", metadata={"help": "the server's --max-batch values, comma-separated"})
    per_client: int = field(default=2, metadata={"help": "requests each client sends, one after another"})
    max_tokens: int = 100
    visitors: int = field(default=8, metadata={"help": "playground: visitors at once"})
    stories: int = field(default=3, metadata={"help": "playground: stories each visitor asks for, one after another"})
    part: str = field(default="all", metadata={"help": "server, playground or all"})
    out: str | None = field(default=None, metadata={"help": "write the rows as JSON here"})


def level(client, name: str, clients: int, per_client: int, max_tokens: int) -> dict:
    def one_client(c):
        latencies, tokens = [], 0
        for r in range(per_client):
            start = time.perf_counter()
            reply = client.completions.create(model=name, prompt="Once upon a time", max_tokens=max_tokens,
                                              temperature=1.0, seed=1000 * c + r)
            latencies.append(time.perf_counter() - start)
            tokens += reply.usage.completion_tokens
        return latencies, tokens

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one_client, range(clients)))
    wall = time.perf_counter() - start
    latencies = sorted(x for lat, _ in results for x in lat)
    tokens = sum(t for _, t in results)
    return {"concurrency": clients, "requests": len(latencies), "tokens": tokens,
            "tokens_per_s": round(tokens / wall, 1), "p50_s": round(statistics.median(latencies), 2),
            "p95_s": round(latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))], 2)}


def bench(folder: str, label: str, max_batch: int, args: Args) -> list[dict]:
    import openai

    port = free_port()
    command = [sys.executable, "-m", "tinygpt", "serve", folder, "--port", str(port), "--max-batch", str(max_batch)]
    rows = []
    for _ in running_server(command, f"http://127.0.0.1:{port}/health", timeout=300):
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=900)
        level(client, folder, 1, 1, 8)  # warm-up: the first request pays for setting up
        for clients in map(int, args.concurrency.split(",")):
            row = {"model": label, "batching": f"max batch {max_batch}",
                   **level(client, folder, clients, args.per_client, args.max_tokens)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def playground(folder: str, max_batch: int, args: Args) -> dict:
    """`tinygpt app` with `--max-batch`, and `visitors` Gradio clients each asking for `stories` stories."""
    from gradio_client import Client

    port = free_port()
    command = [sys.executable, "-m", "tinygpt", "app", "--model", folder, "--port", str(port), "--max-batch",
               str(max_batch)]
    url = f"http://127.0.0.1:{port}/"
    for _ in running_server(command, url, env={"GRADIO_ANALYTICS_ENABLED": "False"}, timeout=300):
        def visitor(v):
            client, latencies = Client(url, verbose=False), []
            for s in range(args.stories):
                start = time.perf_counter()
                client.predict(folder, "Once upon a time", args.max_tokens, 0.8, 50, 0.95, 1.0, 100 * v + s,
                               api_name="/generate")
                latencies.append(time.perf_counter() - start)
            return latencies

        visitor(99)  # warm-up
        start = time.perf_counter()
        with ThreadPoolExecutor(args.visitors) as pool:
            latencies = sorted(x for lat in pool.map(visitor, range(args.visitors)) for x in lat)
        wall = time.perf_counter() - start
    row = {"model": "playground " + Path(folder).name, "batching": f"max batch {max_batch}",
           "concurrency": args.visitors, "requests": len(latencies), "wall_s": round(wall, 1),
           "p50_s": round(statistics.median(latencies), 2),
           "p95_s": round(latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))], 2)}
    print(json.dumps(row), flush=True)
    return row


def main(argv=None) -> None:
    (args,) = HfArgumentParser(Args).parse_args_into_dataclasses(args=argv)
    rows = []
    if args.part in ("playground", "all"):
        rows += [playground(args.model, max_batch, args) for max_batch in (1, 8)]
    if args.part not in ("server", "all"):
        return report(rows, args)
    with tempfile.TemporaryDirectory() as tmp:
        seed = Path(tmp) / "seed"
        TinyGPTForCausalLM(TinyGPTConfig.from_preset("tinystories-41m")).save_pretrained(seed)
        AutoTokenizer.from_pretrained(args.model).save_pretrained(seed)
        batches = [int(b) for b in args.max_batches.split(",")]
        for folder, label in ((args.model, "trained " + Path(args.model).name), (str(seed), "seed 41M")):
            neo = export_gpt_neo(folder, Path(tmp) / (label.replace(" ", "-") + "-gpt-neo"))
            rows += bench(str(neo), label + " as GPTNeoForCausalLM", max(batches), args)
            for max_batch in batches:
                rows += bench(folder, label, max_batch, args)
    report(rows, args)


def report(rows: list[dict], args: Args) -> None:
    print(f"\n{machine()}\n| model | batching | concurrency | tokens/s | p50 s | p95 s |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['batching']} | {r['concurrency']} | {r.get('tokens_per_s', '')} | {r['p50_s']} | "
              f"{r['p95_s']} |")
    if args.out:
        Path(args.out).write_text(json.dumps({"machine": machine(), "args": vars(args), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
