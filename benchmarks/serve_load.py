"""Load test of `hybridembed serve` on loopback: throughput, p50/p99 latency, non-2xx counts and server RSS.

Starts the server itself (a subprocess on 127.0.0.1, bundled all-MiniLM-L6-v2 unless --model says
otherwise), sends one real sentence per request from 1, 8 and 32 concurrent clients, then a soak of
--requests requests while sampling the server's resident memory, and prints a Markdown table.
Bounded: every phase stops at its request count or its time limit, whichever comes first.

    python benchmarks/serve_load.py                      # the full run quoted in docs/serving.md
    python benchmarks/serve_load.py --requests 1000 --level-requests 100   # a quick run
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import platform
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
SENTENCES = REPO / "data" / "quickstart" / "stsb_train.tsv"


@dataclass
class Phase:
    name: str
    concurrency: int
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    transport_errors: int = 0
    seconds: float = 0.0
    batches: int = 0
    texts: int = 0

    @property
    def done(self) -> int:
        return len(self.latencies)

    @property
    def non_2xx(self) -> int:
        return sum(n for code, n in self.statuses.items() if not 200 <= code < 300) + self.transport_errors

    @property
    def five_xx(self) -> int:
        return sum(n for code, n in self.statuses.items() if code >= 500)


def load_sentences(limit: int = 5000) -> list[str]:
    with open(SENTENCES, encoding="utf-8") as f:
        rows = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        texts = [t for row in rows for t in (row["sentence1"], row["sentence2"]) if t.strip()]
    return texts[:limit]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float:
    """Resident set size of a process from /proc (Linux), in MiB."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs, Python {platform.python_version()}, {platform.system()}"


async def run_phase(
    client: httpx.AsyncClient, phase: Phase, texts: list[str], model: str, total: int, max_seconds: float, offset: int, on_progress=None
) -> None:
    """`phase.concurrency` workers send one text per request until `total` requests or `max_seconds`."""
    next_index = 0
    deadline = time.perf_counter() + max_seconds

    async def worker() -> None:
        nonlocal next_index
        while next_index < total and time.perf_counter() < deadline:
            i = next_index
            next_index += 1
            body = {"model": model, "input": texts[(offset + i) % len(texts)]}
            started = time.perf_counter()
            try:
                r = await client.post("/v1/embeddings", json=body)
                await r.aread()
            except httpx.HTTPError:
                phase.transport_errors += 1
                continue
            phase.latencies.append(time.perf_counter() - started)
            phase.statuses[r.status_code] = phase.statuses.get(r.status_code, 0) + 1
            if on_progress is not None:
                on_progress(phase.done)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(phase.concurrency)))
    phase.seconds = time.perf_counter() - started


async def batching_stats(client: httpx.AsyncClient) -> tuple[int, int]:
    stats = (await client.get("/health")).json()["batching"]
    return stats["batches"], stats["texts"]


async def benchmark(args: argparse.Namespace, base_url: str, model: str, pid: int) -> tuple[list[Phase], list[float]]:
    texts = load_sentences()
    limits = httpx.Limits(max_connections=max(args.concurrency) + 4, max_keepalive_connections=max(args.concurrency) + 4)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=60) as client:
        phases = []
        for c in args.concurrency:
            await run_phase(client, Phase("warm-up", c), texts, model, 4 * c, 30, offset=0)
            phase = Phase(f"{c} client{'s' if c > 1 else ''}", c)
            b0, t0 = await batching_stats(client)
            await run_phase(client, phase, texts, model, args.level_requests, args.max_seconds, offset=1000 * c)
            b1, t1 = await batching_stats(client)
            phase.batches, phase.texts = b1 - b0, t1 - t0
            phases.append(phase)
            print(f"# {phase.name}: {phase.done} requests in {phase.seconds:.1f} s", file=sys.stderr, flush=True)

        soak = Phase(f"soak, {args.soak_concurrency} clients", args.soak_concurrency)
        rss = [rss_mib(pid)]
        step = max(1, args.requests // 10)

        def sample(done: int) -> None:
            if done % step == 0:
                rss.append(rss_mib(pid))

        b0, t0 = await batching_stats(client)
        await run_phase(client, soak, texts, model, args.requests, args.soak_max_seconds, offset=0, on_progress=sample)
        b1, t1 = await batching_stats(client)
        soak.batches, soak.texts = b1 - b0, t1 - t0
        if soak.done % step:
            rss.append(rss_mib(pid))
        phases.append(soak)
        print(f"# {soak.name}: {soak.done} requests in {soak.seconds:.1f} s", file=sys.stderr, flush=True)
    return phases, rss


def table(phases: list[Phase], rss: list[float]) -> str:
    lines = [
        "| phase | requests | req/s | p50 ms | p99 ms | mean batch | non-2xx | 5xx |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in phases:
        lat = np.array(p.latencies) * 1000 if p.latencies else np.array([float("nan")])
        mean_batch = p.texts / p.batches if p.batches else float("nan")
        lines.append(
            f"| {p.name} | {p.done} | {p.done / p.seconds:.1f} | {np.percentile(lat, 50):.1f} | "
            f"{np.percentile(lat, 99):.1f} | {mean_batch:.1f} | {p.non_2xx} | {p.five_xx} |"
        )
    half = len(rss) // 2
    growth = rss[-1] - rss[half] if len(rss) > 2 else float("nan")
    lines += [
        "",
        "| server RSS | MiB |",
        "|---|---:|",
        f"| before soak | {rss[0]:.1f} |",
        f"| after soak ({phases[-1].done} requests) | {rss[-1]:.1f} |",
        f"| max during soak | {max(rss):.1f} |",
        f"| change over the second half of the soak | {growth:+.1f} |",
        "",
        "RSS samples (MiB, every 10% of the soak): " + ", ".join(f"{x:.0f}" for x in rss),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="bundled:all-MiniLM-L6-v2", help="model to serve (folder, hub id, alias)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32], help="client counts to measure")
    parser.add_argument("--level-requests", type=int, default=500, help="requests per concurrency level")
    parser.add_argument("--max-seconds", type=float, default=60, help="time limit per concurrency level")
    parser.add_argument("--requests", type=int, default=10000, help="requests in the RSS soak")
    parser.add_argument("--soak-concurrency", type=int, default=32)
    parser.add_argument("--soak-max-seconds", type=float, default=300, help="time limit of the soak")
    parser.add_argument("--server-arg", action="append", default=[], help="extra `hybridembed serve` option (repeatable)")
    args = parser.parse_args(argv)

    load_before = os.getloadavg()[0]
    port = free_port()
    model_name = "bench-model"
    cmd = [
        sys.executable,
        "-m",
        "hybridembed.cli",
        "serve",
        args.model,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--model-name",
        model_name,
        "--no-access-log",
        "--log-level",
        "warning",
        *args.server_arg,
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    with tempfile.TemporaryFile("w+") as log:
        server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            base_url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 180
            while True:
                if server.poll() is not None:
                    log.seek(0)
                    raise SystemExit(f"the server exited with {server.returncode}:\n{log.read()}")
                try:
                    if httpx.get(f"{base_url}/health", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("the server did not answer /health within 180 s")
                time.sleep(0.25)
            phases, rss = asyncio.run(benchmark(args, base_url, model_name, server.pid))
        finally:
            server.terminate()
            try:
                server.wait(20)
            except subprocess.TimeoutExpired:
                server.kill()
    shown = " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    print(f"`{f'python benchmarks/serve_load.py {shown}'.strip()}`")
    options = " ".join(args.server_arg) or "none"
    print(f"Model: {args.model}; one STS-B sentence per request; extra server options: {options}; client and server share the machine.")
    print(f"Machine: {machine()}; 1-minute load average {load_before:.1f} before the run, {os.getloadavg()[0]:.1f} after.")
    print()
    print(table(phases, rss))
    return 1 if any(p.five_xx for p in phases) else 0


if __name__ == "__main__":
    sys.exit(main())
