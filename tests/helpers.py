"""Helpers the test modules share (import them from here, not from conftest or another test module): repo paths, real sentences, torchrun launches, SIGKILL of a process tree, streamed-run traces, a live server."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"
WORKERS = TESTS / "distributed"  # scripts torchrun starts
SHARED_DATA = REPO.parent / "shared" / "data"
QUICKSTART = REPO / "data" / "quickstart"
TRACE_ENV = "HYBRIDEMBED_TRACE_ROWS"  # hybridembed.data.streaming.TRACE_ENV (not imported: this module stays light)


def corpus_sentences(limit: int = 3000) -> list[str]:
    """Real English sentences (the shipped STS-B subset) to train tiny tokenizers on."""
    texts: list[str] = []
    with open(QUICKSTART / "stsb_train.tsv", encoding="utf-8") as f:
        for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            texts += [row["sentence1"], row["sentence2"]]
    return texts[:limit]


def stray_tensors_fail():
    """A context in which a tensor created without an explicit device lands on `meta`.

    Mixing it with real tensors then fails, so a test on the CPU catches the index/mask tensors that
    would sit on the CPU while the batch is on a GPU.
    """
    import torch

    return torch.device("meta")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: str, timeout: int = 300, **env_extra: str) -> subprocess.CompletedProcess:
    """Run a script (or `-m module`) on 2 CPU processes under torchrun, with extra environment variables; wait for it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **env_extra}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


def kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants (torchrun's workers run in their own process groups)."""
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    os.kill(pid, signal.SIGSTOP)  # no new workers while the tree is taken down
    for child in children:
        kill_tree(int(child))
    os.kill(pid, signal.SIGKILL)


def launch_traced_training(recipe: Path, trace: Path, *extra: str) -> subprocess.Popen:
    """`hybridembed train RECIPE` on 2 processes in the background, each rank tracing the streamed rows it trains into `trace`."""
    trace.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", TRACE_ENV: str(trace)}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
               "-m", "hybridembed.cli", "train", str(recipe), *extra]  # fmt: skip
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)


def read_trace(folder: Path, before_step: int | None = None) -> set[tuple[int, int, tuple[str, ...]]]:
    """(step, rank, rows) of every traced batch of both ranks, optionally only those before a step."""
    steps = set()
    for rank in (0, 1):
        path = folder / f"rank{rank}.jsonl"
        for line in path.read_text().splitlines() if path.exists() else []:
            entry = json.loads(line)
            if before_step is None or entry["step"] < before_step:
                steps.add((entry["step"], rank, tuple(entry["rows"])))
    return steps


def kill_after_first_checkpoint(process: subprocess.Popen, folder: Path, rng, max_delay: float = 1.5) -> list[int]:
    """Wait for a complete checkpoint in `folder`, SIGKILL the run a random moment later; the steps of the complete checkpoints left."""
    deadline = time.time() + 300
    while not list(folder.glob("checkpoint-*/trainer_state.json")) and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(rng.uniform(0.0, max_delay))
    kill_tree(process.pid)
    process.wait()
    return sorted(int(p.parent.name.split("-")[1]) for p in folder.glob("checkpoint-*/trainer_state.json"))


@contextmanager
def running_server(app):
    """Run `app` on uvicorn in a thread on a free loopback port; yield its base URL; shut it down."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name="test-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)
        assert not thread.is_alive(), "uvicorn did not stop"
