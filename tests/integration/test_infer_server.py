"""The OpenAI-compatible server, tested LIVE: uvicorn on 127.0.0.1 (random free port) in a thread,
driven by the official `openai` client (and httpx for raw bodies the client would never send)."""

from __future__ import annotations

import concurrent.futures as cf
import socket
import threading
import time

import httpx
import pytest

openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")

from hrm_text.infer.chat import generate_one  # noqa: E402
from hrm_text.infer.engine import SamplingParams  # noqa: E402
from hrm_text.checkpoint.loading import load_model  # noqa: E402
from hrm_text.infer.server import create_app  # noqa: E402
from hrm_text.infer.textgen import make_engine  # noqa: E402

KEY = "sk-test-123"
MODEL = "tiny-test"
QUESTIONS = ["12+30=", "7+5=", "99+1=", "40+2=", "3+4=", "55+44=", "1+1=", "8+9="]
N = 8


@pytest.fixture(scope="module")
def server(trained_tiny):
    loaded = load_model(trained_tiny)
    # expected greedy answers, computed on a separate engine before the server owns the model
    eng = make_engine(loaded.model, loaded.tokenizer, max_batch=1)
    expected = {q: generate_one(eng, loaded.tokenizer, q, "direct", SamplingParams(max_tokens=N)).text for q in QUESTIONS}
    expected_cot = generate_one(eng, loaded.tokenizer, QUESTIONS[0], "cot", SamplingParams(max_tokens=N)).text
    del eng
    app = create_app(loaded, model_name=MODEL, api_key=KEY, max_batch=4, max_len=128)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started:
        assert time.time() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.05)
    base = f"http://127.0.0.1:{port}"
    yield {"base": base, "expected": expected, "expected_cot": expected_cot, "app": app}
    srv.should_exit = True
    thread.join(15)
    sock.close()
    assert not thread.is_alive()


def client(server, key: str | None = KEY) -> "openai.OpenAI":
    return openai.OpenAI(base_url=server["base"] + "/v1", api_key=key or "none", max_retries=0, timeout=60)


def healthy(server) -> None:
    r = httpx.get(server["base"] + "/health", timeout=10)
    assert r.status_code == 200 and r.json()["status"] == "ok"


def test_models_and_health(server):
    healthy(server)
    models = client(server).models.list()
    assert [m.id for m in models.data] == [MODEL, "hrm-text"]  # its name and the stable alias
    assert client(server).models.retrieve("hrm-text").id == "hrm-text"


def test_stable_alias_serves_the_same_model(server, trained_tiny):
    """`model="hrm-text"` (the usual client call) reaches the served model; other names stay 404."""
    c = client(server)
    r = c.completions.create(model="hrm-text", prompt=QUESTIONS[0], max_tokens=N)
    assert r.choices[0].text == server["expected"][QUESTIONS[0]]
    r = c.chat.completions.create(model="hrm-text", messages=[{"role": "user", "content": QUESTIONS[1]}], max_tokens=N)
    assert r.choices[0].message.content == server["expected"][QUESTIONS[1]]
    with pytest.raises(openai.NotFoundError, match="serves 'tiny-test' and 'hrm-text'"):
        c.completions.create(model="hrm-text-2", prompt="1+1=", max_tokens=2)
    with pytest.raises(openai.NotFoundError):
        c.models.retrieve("gpt-4")
    # without --model-name the id is the checkpoint's run/step folder, and the alias comes with it
    app = create_app(load_model(trained_tiny))
    assert app.state.hrm.model_ids == [f"{trained_tiny.parent.name}/{trained_tiny.name}", "hrm-text"]


def test_completion_equals_engine(server):
    c = client(server)
    r = c.completions.create(model=MODEL, prompt=QUESTIONS[0], max_tokens=N)
    assert r.choices[0].text == server["expected"][QUESTIONS[0]]
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.completion_tokens >= 1 and r.usage.prompt_tokens > 3
    r = c.completions.create(model=MODEL, prompt=QUESTIONS[0], max_tokens=N, extra_body={"condition": "cot"})
    assert r.choices[0].text == server["expected_cot"]
    r = c.completions.create(model=MODEL, prompt=QUESTIONS[:3], max_tokens=N)  # several prompts, one request
    assert [ch.text for ch in r.choices] == [server["expected"][q] for q in QUESTIONS[:3]]


def test_chat_single_message_equals_completion(server):
    r = client(server).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": QUESTIONS[1]}], max_tokens=N)
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == server["expected"][QUESTIONS[1]]
    r = client(server).chat.completions.create(
        model=MODEL, max_tokens=N,
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "1+1="},
                  {"role": "assistant", "content": "2"}, {"role": "user", "content": "2+2="}])
    assert isinstance(r.choices[0].message.content, str)


def test_streaming_completion_and_chat(server):
    c = client(server)
    q = QUESTIONS[2]
    chunks = list(c.completions.create(model=MODEL, prompt=q, max_tokens=N, stream=True))
    assert "".join(ch.choices[0].text for ch in chunks) == server["expected"][q]
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    chunks = list(c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": q}], max_tokens=N, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == server["expected"][q]
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_stop_string(server):
    q = next(q for q in QUESTIONS if len(server["expected"][q]) >= 2)
    want = server["expected"][q]
    stop = want[1]
    r = client(server).completions.create(model=MODEL, prompt=q, max_tokens=N, stop=[stop])
    assert r.choices[0].text == want[: want.index(stop)] and r.choices[0].finish_reason == "stop"
    chunks = list(client(server).completions.create(model=MODEL, prompt=q, max_tokens=N, stop=stop, stream=True))
    assert "".join(ch.choices[0].text for ch in chunks) == want[: want.index(stop)]


def test_concurrent_requests_are_batched_and_routed(server):
    c = client(server)

    def ask(q: str) -> tuple[str, str]:
        return q, c.completions.create(model=MODEL, prompt=q, max_tokens=N).choices[0].text

    with cf.ThreadPoolExecutor(8) as pool:
        got = list(pool.map(ask, QUESTIONS * 2))
    assert all(text == server["expected"][q] for q, text in got)


BAD = [
    (dict(model="gpt-4", prompt="1+1="), openai.NotFoundError, "does not exist"),
    (dict(model=MODEL, prompt="1+1=", max_tokens=-1), openai.BadRequestError, "max_tokens"),
    (dict(model=MODEL, prompt="1+1=", max_tokens=0), openai.BadRequestError, "max_tokens"),
    (dict(model=MODEL, prompt="1+1=", max_tokens=10**9), openai.BadRequestError, "max_tokens"),
    (dict(model=MODEL, prompt="1+2+" * 200), openai.BadRequestError, "context length"),
    (dict(model=MODEL, prompt="1+1=", extra_body={"condition": "bogus"}), openai.BadRequestError, "unknown condition"),
    (dict(model=MODEL, prompt="1+1=", temperature=-0.5), openai.BadRequestError, "temperature"),
    (dict(model=MODEL, prompt="1+1=", temperature=7), openai.BadRequestError, "temperature"),
    (dict(model=MODEL, prompt="1+1=", top_p=0), openai.BadRequestError, "top_p"),
    (dict(model=MODEL, prompt="1+1=", top_p=1.5), openai.BadRequestError, "top_p"),
    (dict(model=MODEL, prompt=[]), openai.BadRequestError, "prompt"),
]


@pytest.mark.parametrize("kwargs,exc,msg", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_completion_requests(server, kwargs, exc, msg):
    with pytest.raises(exc) as e:
        client(server).completions.create(**kwargs)
    assert msg in str(e.value)
    assert 400 <= e.value.status_code < 500
    body = e.value.body
    assert isinstance(body, dict) and body.get("message")  # the client unwraps {"error": {...}}
    healthy(server)


def test_bad_chat_requests(server):
    c = client(server)
    for messages, msg in (([], "messages"), ([{"role": "assistant", "content": "hi"}], "last message"),
                          ([{"role": "robot", "content": "hi"}], "role"), ([{"role": "user", "content": "1+" * 300}], "context length")):
        with pytest.raises(openai.BadRequestError) as e:
            c.chat.completions.create(model=MODEL, messages=messages, max_tokens=4)
        assert msg in str(e.value)
    with pytest.raises(openai.BadRequestError, match="unknown condition"):
        c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "1"}], extra_body={"condition": "cot,zz"}, stream=True)
    healthy(server)


def test_invalid_json_and_auth(server):
    base, auth = server["base"], {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    r = httpx.post(base + "/v1/completions", content=b'{"model": "tiny-test", "prompt": ', headers=auth, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = httpx.post(base + "/v1/chat/completions", content=b"[1, 2]", headers=auth, timeout=10)
    assert r.status_code == 400 and "JSON object" in r.json()["error"]["message"]
    r = httpx.post(base + "/v1/completions", json={"model": MODEL, "prompt": "1", "max_tokens": "many"}, headers=auth, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"
    r = httpx.post(base + "/v1/nothing", json={}, headers=auth, timeout=10)
    assert r.status_code == 404 and "error" in r.json()
    with pytest.raises(openai.AuthenticationError):
        client(server, key="wrong").completions.create(model=MODEL, prompt="1+1=", max_tokens=2)
    r = httpx.get(base + "/v1/models", timeout=10)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    healthy(server)  # /health needs no key
    assert client(server).completions.create(model=MODEL, prompt=QUESTIONS[0], max_tokens=N).choices[0].text == \
        server["expected"][QUESTIONS[0]]


def test_client_disconnect_mid_stream_does_not_hurt(server):
    with httpx.stream("POST", server["base"] + "/v1/completions", timeout=30,
                      headers={"Authorization": f"Bearer {KEY}"},
                      json={"model": MODEL, "prompt": "1+1=", "max_tokens": 100, "stream": True}) as r:
        assert r.status_code == 200
        next(r.iter_lines())  # read one event, then hang up
    r = client(server).completions.create(model=MODEL, prompt=QUESTIONS[3], max_tokens=N)
    assert r.choices[0].text == server["expected"][QUESTIONS[3]]


def test_load_200_requests_16_clients(server):
    c = client(server)
    t0 = time.time()

    def one(i: int) -> bool:
        if i % 4 == 0:
            chunks = list(c.completions.create(model=MODEL, prompt=f"{i}+{i}=", max_tokens=3, stream=True))
            return chunks[-1].choices[0].finish_reason in ("stop", "length")
        if i % 4 == 1:
            r = c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": f"{i}+1="}], max_tokens=3,
                                          temperature=0.8, seed=i)
            return r.choices[0].finish_reason in ("stop", "length")
        r = c.completions.create(model=MODEL, prompt=f"{i}+{i % 7}=", max_tokens=3)
        return r.choices[0].finish_reason in ("stop", "length")

    with cf.ThreadPoolExecutor(16) as pool:
        ok = list(pool.map(one, range(200)))
    assert all(ok) and len(ok) == 200
    h = httpx.get(server["base"] + "/health", timeout=10).json()
    assert h["status"] == "ok" and h["restarts"] == 0 and h["in_flight"] == 0
    assert time.time() - t0 < 120
