"""`hrm-text generate` and `hrm-text chat` through typer's CliRunner (chat with scripted stdin)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from hrm_text.cli import app
from hrm_text.infer.chat import ChatSession, StreamDecoder, fold_history, fold_messages
from hrm_text.infer.engine import SamplingParams
from hrm_text.checkpoint.loading import load_model
from hrm_text.infer.textgen import make_engine

runner = CliRunner()


@pytest.fixture(scope="module")
def expected(trained_tiny):
    """Greedy answers computed directly on the engine, to compare the CLI output with."""
    loaded = load_model(trained_tiny)
    eng = make_engine(loaded.model, loaded.tokenizer, max_batch=1)
    from hrm_text.infer.chat import generate_one

    def answer(instr: str, cond: str = "direct", n: int = 8) -> str:
        return generate_one(eng, loaded.tokenizer, instr, cond, SamplingParams(max_tokens=n)).text or ""

    return answer


def test_generate_prints_the_engine_answer(trained_tiny, expected):
    res = runner.invoke(app, ["generate", str(trained_tiny), "12+30=", "--max-tokens", "8"])
    assert res.exit_code == 0, res.output
    assert res.stdout == expected("12+30=") + "\n"
    res = runner.invoke(app, ["generate", str(trained_tiny), "12+30=", "-n", "8", "--condition", "cot", "--no-stream"])
    assert res.exit_code == 0 and res.stdout == expected("12+30=", "cot") + "\n"


def test_generate_json_and_ids(trained_tiny, expected):
    """`--json` gives what scripts need (ids, text, finish reason) and agrees with the engine;
    `--ids` prints the same ids; decoding the ids gives the text."""
    import json

    res = runner.invoke(app, ["generate", str(trained_tiny), "12+30=", "-n", "8", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert set(out) == {"prompt", "condition", "prompt_ids", "ids", "text", "finish_reason"}
    assert out["text"] == expected("12+30=") and out["prompt"] == "12+30=" and out["condition"] == "direct"
    assert out["finish_reason"] in ("stop", "length") and all(isinstance(i, int) for i in out["ids"])
    tok = load_model(trained_tiny).tokenizer
    assert out["prompt_ids"] == tok.encode_prompt("12+30=", "direct")
    assert tok.decode(out["ids"], skip_special_tokens=True) == out["text"]
    assert out["finish_reason"] == ("length" if len(out["ids"]) == 8 else "stop")
    res = runner.invoke(app, ["generate", str(trained_tiny), "12+30=", "-n", "8", "--ids"])
    assert res.exit_code == 0 and res.stdout == " ".join(map(str, out["ids"])) + "\n"
    res = runner.invoke(app, ["generate", str(trained_tiny), "12+30=", "--ids", "--json"])
    assert res.exit_code == 2 and "one of --json and --ids" in res.output


def test_generate_sampling_is_seeded(trained_tiny):
    args = ["generate", str(trained_tiny), "5+5=", "-n", "6", "--temperature", "1.5", "--top-k", "50", "--top-p", "0.9", "--seed", "7"]
    a, b = runner.invoke(app, args), runner.invoke(app, args)
    assert a.exit_code == 0 and a.stdout == b.stdout


def test_generate_user_errors_exit_2_without_traceback(trained_tiny, tmp_path):
    cases = [
        (["generate", str(trained_tiny), "1+1=", "--condition", "bogus"], "unknown condition tag 'bogus'"),
        (["generate", str(tmp_path / "nope"), "1+1="], "does not exist"),
        (["generate", str(trained_tiny), "1+1=", "--temperature", "-1"], "temperature"),
        (["generate", str(trained_tiny), "1+1=", "--max-tokens", "0"], "max_tokens"),
        (["generate", str(trained_tiny), "9" * 2000], "does not fit"),
        (["chat", str(tmp_path)], "no complete checkpoint"),
    ]
    for args, msg in cases:
        res = runner.invoke(app, args)
        assert res.exit_code == 2, (args, res.output)
        assert msg in res.output and "Traceback" not in res.output, (args, res.output)


def test_chat_scripted_session(trained_tiny, expected):
    script = "12+30=\n/condition cot\n/condition nope\n7+5=\n/reset\n/help\n12+30=\n/quit\nnever sent\n"
    res = runner.invoke(app, ["chat", str(trained_tiny), "-n", "8"], input=script)
    assert res.exit_code == 0, res.output
    out = res.stdout
    first = expected("12+30=")
    second = expected(fold_history([("12+30=", first)], "7+5="), "cot")
    assert out.count("[condition: cot]") == 1
    assert "error: unknown condition tag 'nope'" in out
    assert "[conversation cleared]" in out and "/reset" in out  # the help text lists the commands
    lines = out.splitlines()
    assert lines[1] == first and second in lines
    # after /reset the first message is answered without history, under the cot condition
    assert lines[-1] == expected("12+30=", "cot")


def test_chat_drops_oldest_turns_when_context_is_full(trained_tiny):
    import io

    loaded = load_model(trained_tiny)
    eng = make_engine(loaded.model, loaded.tokenizer, max_batch=1, max_len=48)
    s = ChatSession(eng, loaded.tokenizer, SamplingParams(max_tokens=4))
    out = io.StringIO()
    for q in ("11+11=", "22+22=", "33+33=", "44+44=", "55+55="):
        assert s.handle(q, out)
    assert "error" not in out.getvalue()
    assert 0 < len(s.history) < 5  # oldest turns were dropped to keep the prompt in 48 tokens


def test_folding_and_stream_decoder_rules():
    assert fold_messages([("user", "hi")]) == "hi"
    assert fold_messages([("system", "s"), ("user", "a"), ("assistant", "b"), ("user", "c")]) == \
        "System: s\nUser: a\nAssistant: b\nUser: c"
    with pytest.raises(ValueError):
        fold_messages([("user", "a"), ("assistant", "b")])
    with pytest.raises(ValueError):
        fold_messages([("robot", "a")])
    # stop strings are never shown, even when they arrive split over tokens
    pieces = ["ab", "c<", "/s", "top>", "zz"]
    dec = StreamDecoder(lambda ids: "".join(pieces[i] for i in ids), stop=["</stop>"])
    shown = "".join(dec.push(i) for i in range(len(pieces)))
    assert shown == "abc" and dec.stopped
    dec = StreamDecoder(lambda ids: "".join(pieces[i] for i in ids), stop=["<x"])
    shown = "".join(dec.push(i) for i in range(2))
    assert shown == "abc" and dec.finish("abc<") == "<"  # held back, flushed at the end
