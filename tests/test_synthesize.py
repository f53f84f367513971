"""`hybridembed data synthesize`: the HTTP generator against a real local OpenAI-style server, resume, the local causal LM, each filter, the CLI end to end."""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter, defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from helpers import corpus_sentences
from hybridembed.cli import main
from hybridembed.synthesize import EndpointGenerator, EndpointSettings, GenerationSettings, QualitySettings, SynthesisSettings, filters as rules, synthesize
from hybridembed.synthesize.prompts import load_prompt, load_prompts, parse_query, prompt_for

REPO = Path(__file__).resolve().parents[1]
TOPICS = [
    "volcano lava magma eruption", "violin orchestra concerto strings", "glacier ice arctic melting", "bicycle pedal wheel chain",
    "coffee espresso roast beans", "satellite orbit rocket launch", "honey bees hive pollen", "chess knight bishop opening",
    "tomato garden soil compost", "submarine ocean sonar depth", "pyramid pharaoh egypt tomb", "piano keys chords melody",
]  # fmt: skip


def passages(n: int = 12) -> list[dict]:
    return [{"_id": f"p{i}", "text": f"This passage is about {TOPICS[i % len(TOPICS)]} and nothing else, number {i}."} for i in range(n)]


def write_corpus(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def fake_reply(prompt: str) -> str:
    """A deterministic 'LLM': asks about two words of the passage, so the query is neither a copy nor off topic."""
    passage = prompt.split("Passage:\n", 1)[1].split("\n\n", 1)[0]
    words = passage.split()
    return f'Query: "where can I learn about {words[4]} {words[5]}?"'


class FakeOpenAI:
    """An OpenAI chat-completions server on 127.0.0.1 in a thread; passages tagged RATE/FLAKY/SLOW/DEAD misbehave."""

    def __init__(self, delay: float = 0.05, slow: float = 1.5) -> None:
        self.attempts: Counter = Counter()
        self.times: dict[str, list[float]] = defaultdict(list)
        self.in_flight = self.max_in_flight = self.total = 0
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path != "/v1/chat/completions" or body.get("model") != "fake":
                    return self._send(404, {"error": "no such route or model"})
                prompt = body["messages"][0]["content"]
                tag = re.search(r"\b(RATE|FLAKY|SLOW|DEAD)\b", prompt)
                key = prompt.split("Passage:\n", 1)[1][:60]
                with owner.lock:
                    owner.attempts[key] += 1
                    owner.times[key].append(time.monotonic())
                    owner.total += 1
                    owner.in_flight += 1
                    owner.max_in_flight = max(owner.max_in_flight, owner.in_flight)
                    attempt = owner.attempts[key]
                try:
                    time.sleep(delay)
                    if tag and tag.group(1) == "RATE" and attempt == 1:
                        return self._send(429, {"error": "slow down"}, {"Retry-After": "1"})
                    if tag and tag.group(1) == "FLAKY" and attempt == 1:
                        return self._send(500, {"error": "oops"})
                    if tag and tag.group(1) == "DEAD":
                        return self._send(503, {"error": "down"})
                    if tag and tag.group(1) == "SLOW" and attempt == 1:
                        time.sleep(slow)
                    self._send(200, {"choices": [{"message": {"role": "assistant", "content": fake_reply(prompt)}}]})
                finally:
                    with owner.lock:
                        owner.in_flight -= 1

            def _send(self, status: int, payload: dict, headers: dict | None = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                for name, value in {"Content-Type": "application/json", **(headers or {})}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and left

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeOpenAI:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def endpoint(server: FakeOpenAI, stats: Counter, **overrides) -> EndpointGenerator:
    settings = EndpointSettings(url=server.url, model="fake", concurrency=3, timeout=0.5, max_retries=3, backoff_base=0.01, backoff_max=2.0)
    for name, value in overrides.items():
        setattr(settings, name, value)
    return EndpointGenerator(settings, GenerationSettings(temperature=0), stats)


def test_http_retries_backoff_and_concurrency_bound():
    prompts = [f"Passage:\npassage {i} {tag} a b c\n\nQuestion:" for i, tag in enumerate(["RATE", "FLAKY", "SLOW", "DEAD", "ok", "ok", "ok", "ok"])]
    stats: Counter = Counter()
    with FakeOpenAI() as server:
        replies = endpoint(server, stats).generate(prompts, list(range(len(prompts))))
    assert [r.status for r in replies] == ["ok", "ok", "ok", "failed", "ok", "ok", "ok", "ok"]
    assert replies[0].text.startswith("Query:")
    assert server.max_in_flight <= 3 and server.max_in_flight >= 2
    assert stats["http error: HTTP 429"] == 1 and stats["http error: HTTP 500"] == 1 and stats["http error: timeout"] == 1
    assert stats["http error: HTTP 503"] == 4 and stats["failed: retries exhausted"] == 1  # DEAD: 1 + 3 retries
    assert stats["retries"] == 1 + 1 + 1 + 3
    assert stats["requests sent"] == server.total == 8 + stats["retries"]
    rate = server.times[prompts[0].split("Passage:\n", 1)[1][:60]]
    assert rate[1] - rate[0] >= 0.95  # Retry-After: 1 honoured


def test_http_request_budget_is_respected():
    prompts = [f"Passage:\npassage {i} {'DEAD' if i < 2 else 'ok'} a b c\n\nQuestion:" for i in range(10)]
    stats: Counter = Counter()
    with FakeOpenAI(delay=0.01) as server:
        generator = endpoint(server, stats, max_requests=6, concurrency=2)
        replies = generator.generate(prompts, list(range(10)))
    assert server.total == stats["requests sent"] == 6
    assert Counter(r.status for r in replies)["budget"] == stats["not sent: --max-requests spent"] >= 4
    assert generator.budget_spent


def test_http_generator_inside_a_running_event_loop():
    import asyncio

    with FakeOpenAI(delay=0.01) as server:
        generator = endpoint(server, Counter())

        async def notebook_cell():
            return generator.generate(["Passage:\nthis is some passage words here ok\n\nQ"], [0])

        replies = asyncio.run(notebook_cell())
    assert replies[0].status == "ok" and "words here" in replies[0].text


def test_http_fatal_status_stops_the_run():
    from hybridembed.errors import HybridembedError

    with FakeOpenAI() as server:
        generator = endpoint(server, Counter())
        generator.url = generator.url.replace("/v1/", "/nope/")
        with pytest.raises(HybridembedError, match="HTTP 404"):
            generator.generate(["Passage:\nx a b c d e\n\nQ"], [0])


def settings_for(corpus: Path, out: Path, **quality) -> SynthesisSettings:
    q = QualitySettings(consistency=False, **quality)
    return SynthesisSettings(corpus=str(corpus), out=str(out), chunk_size=4, progress=False, quality=q)


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_resume_after_budget_and_half_written_line(tmp_path):
    rows = passages(12)
    rows[3]["text"] += " DEAD"  # fails every time: never marked done, asked again on each run
    corpus = write_corpus(tmp_path / "corpus.jsonl", rows)
    out = tmp_path / "synth.jsonl"
    with FakeOpenAI(delay=0.01) as server:
        first = synthesize(settings_for(corpus, out), endpoint(server, Counter(), max_requests=6, max_retries=0))
        assert first.stats["kept"] == 5 and first.stats["not sent: --max-requests spent"] >= 6
        with open(out, "a", encoding="utf-8") as f:
            f.write('{"query": "half a li')  # a run killed mid-write
        second = synthesize(settings_for(corpus, out), endpoint(server, Counter(), max_retries=0))
        assert second.stats["skipped: already done"] == 5 and second.stats["kept"] == 6
        third = synthesize(settings_for(corpus, out), endpoint(server, Counter(), max_retries=0))
    assert third.stats["to do"] == 1 and third.stats["kept"] == 0  # only the DEAD passage is asked again
    ids = [r["passage_id"] for r in read_rows(out)]
    assert sorted(ids) == sorted(f"p{i}" for i in range(12) if i != 3) and len(ids) == len(set(ids))


def test_prompts_rotate_and_fill_placeholders(tmp_path):
    templates = load_prompts(["question,short_query", "claim", "question"])
    assert [t.name for t in templates] == ["question", "short_query", "claim"]
    assert [prompt_for(templates, i).name for i in range(4)] == ["question", "short_query", "claim", "question"]
    text = load_prompt("question").render("a {language} passage", None, "Chinese", None)
    assert "Title:" not in text and "a {language} passage" in text and "written in Chinese" in text
    assert load_prompt("claim").wants_json and not load_prompt("question").wants_json
    own = tmp_path / "mine.txt"
    own.write_text("Passage: {passage}\nInstruction: {instruction}\nQ:")
    assert load_prompt(str(own)).render("P", instruction="find it") == "Passage: P\nInstruction: find it\nQ:\n"


@pytest.mark.parametrize(
    ("reply", "query"),
    [('Query: "what is a cat?"', "what is a cat?"), ("**Question:** Who built it?\nBecause…", "Who built it?"),
     ("\nQuestion:\n1. why is the sky blue?", "why is the sky blue?"), ('```json\n{"query": "x y"}\n```', "x y"),
     ("问题：猫是什么？", "猫是什么？"), ("「引号」", "引号"), ('{"oops": 1', None), ("  \n ", None), (None, None)],
)  # fmt: skip
def test_parse_query(reply, query):
    assert parse_query(reply) == query


def test_filters_on_hand_made_cases():
    stats: Counter = Counter()
    f = rules.QueryFilters(QualitySettings(language="zh", max_overlap=0.8), stats)
    passage = "泡泡战士是韩国Nexon开发的游戏，玩家以水枪泡封敌人。"
    assert f.rule(None, passage) == rules.MALFORMED
    assert f.rule("猫", passage) == rules.LENGTH
    assert f.rule("韩国Nexon开发", passage) == rules.SUBSTRING
    assert f.rule("泡泡战士是韩国开发的游戏", passage) == rules.OVERLAP
    assert f.rule("Which company made this game?", passage) == rules.LANGUAGE
    assert f.rule("哪家公司制作了泡泡战士？", passage) is None
    assert f.duplicate("哪家公司制作了泡泡战士？") is None
    assert f.duplicate("哪家公司制作了泡泡战士？ ") == rules.EXACT
    long = "which company first developed and published the online game bubble fighter in south korea"
    assert f.duplicate(long) is None and f.duplicate(long + "!") == rules.NEAR
    assert rules.overlap_ratio("cats are pets", "Cats are small pets.") == 1.0


@pytest.mark.e2e
def test_consistency_filter_with_minilm(tmp_path):
    from hybridembed.modeling.model import load_model

    model = load_model("bundled:all-MiniLM-L6-v2")
    corpus = ["The Eiffel Tower is a wrought-iron tower in Paris.", "Honey bees collect pollen and make honey in hives.",
              "A violin is a string instrument played with a bow."]  # fmt: skip
    consistency = rules.ConsistencyFilter(model, corpus, QualitySettings(cache_dir=str(tmp_path)), progress=False)
    assert consistency.keep(["where do bees make honey?", "what tower stands in Paris?", "how do bees fly?"], [1, 0, 2]) == [True, True, False]


def test_local_causal_lm(tmp_path):
    from hybridembed.modeling.tiny import build_tiny_backbone
    from hybridembed.synthesize import LocalGenerator, LocalSettings

    path = build_tiny_backbone(tmp_path / "gpt2", corpus_sentences(500), kind="gpt2", hidden_size=32, vocab_size=400)
    stats: Counter = Counter()
    generation = GenerationSettings(max_new_tokens=8, temperature=0.8, seed=3)
    generator = LocalGenerator(LocalSettings(path=str(path), batch_size=2), generation, stats)
    prompts = ["Passage: a man plays a guitar\nQuery:", "Passage: two dogs run on the beach in the sun today\nQuery:", "Passage: x\nQuery:"]
    first = generator.generate(prompts, [0, 1, 2])
    assert [r.status for r in first] == ["ok"] * 3 and all(isinstance(r.text, str) for r in first)
    assert [r.text for r in generator.generate(prompts, [0, 1, 2])] == [r.text for r in first]  # seeded
    assert generator.tokenizer.padding_side == "left" and stats["requests sent"] == 6
    generator.tokenizer.chat_template = "{% for m in messages %}<|user|>{{ m['content'] }}{% endfor %}<|assistant|>"
    assert generator._text("hi") == ("<|user|>hi<|assistant|>", False)
    # Through the CLI: the random LM's replies are judged and counted, whatever they say.
    corpus = write_corpus(tmp_path / "corpus.jsonl", passages(4))
    code = main(["data", "synthesize", "--corpus", str(corpus), "--out", str(tmp_path / "o.jsonl"), "--local", str(path),
                 "--no-consistency", "--max-new-tokens", "6", "--no-progress"])  # fmt: skip
    assert code == 0 and len((tmp_path / "o.jsonl.done").read_text().splitlines()) == 4


def test_cli_end_to_end_passes_data_check(tmp_path, tiny_model_dir, capsys):
    corpus_dir = tmp_path / "beir"
    corpus_dir.mkdir()
    rows = passages(12)
    rows[1]["text"] += " RATE"
    rows[2]["text"] += " FLAKY"
    write_corpus(corpus_dir / "corpus.jsonl", rows)
    (corpus_dir / "queries.jsonl").write_text('{"_id": "q1", "text": "never read"}\n')
    out = tmp_path / "synth.jsonl"
    with FakeOpenAI(delay=0.01) as server:
        code = main(["data", "synthesize", "--corpus", str(corpus_dir), "--out", str(out), "--endpoint", server.url, "--model", "fake",
                     "--concurrency", "4", "--filter-model", str(tiny_model_dir), "--consistency-k", "3", "--cache-dir", str(tmp_path / "cache"),
                     "--mine-negatives", "2", "--negatives-range", "2", "6", "--prompt", "question,short_query", "--no-progress"])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "http errors: HTTP 429: 1, HTTP 500: 1" in printed and "consistency (passage not in top k):" in printed
    written = read_rows(out)
    assert written and {r["prompt_id"] for r in written} == {"question", "short_query"}
    assert all(r["generator"] == "endpoint:fake" and len(r["negatives"]) == 2 and r["positives"][0] not in r["negatives"] for r in written)
    assert main(["data", "check", str(out), "--task", "retrieval"]) == 0
    assert f"{len(written)} rows, task retrieval" in capsys.readouterr().out


def test_cli_bad_corpus_line(tmp_path, capsys):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"_id": "a", "text": "fine"}\n{"_id": "b", "text": ""}\n{"_id": "a", "text": "again"}\n', encoding="utf-8")
    code = main(["data", "synthesize", "--corpus", str(corpus), "--out", str(tmp_path / "o.jsonl"), "--endpoint", "http://127.0.0.1:9", "--model", "m"])
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err
    assert f"{corpus}:2: text: missing or empty text" in err and f"{corpus}:3: id: duplicate id 'a' (first on line 1)" in err
    assert not (tmp_path / "o.jsonl").exists()


@pytest.mark.parametrize(
    ("option", "value", "named"),
    [("--max-overlap", "0", "max_overlap"), ("--consistency-k", "0", "consistency_k"), ("--top-p", "2", "top_p"), ("--concurrency", "0", "concurrency")],
)
def test_cli_out_of_range_option_is_one_line_naming_it(tmp_path, capsys, option, value, named):
    out = tmp_path / "o.jsonl"
    code = main(
        ["data", "synthesize", "--corpus", str(tmp_path / "c.jsonl"), "--out", str(out), "--endpoint", "http://127.0.0.1:9", "--model", "m", option, value]
    )
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.startswith("error: invalid synthesize option: ") and f"{named}: Input should be" in err and err.count("\n") == 1
    assert not out.exists()


@pytest.mark.e2e
def test_benchmark_quick(tmp_path, shared_data):
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "synthetic_data.py"), "--quick", "--work", str(tmp_path)],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1].startswith("|")
