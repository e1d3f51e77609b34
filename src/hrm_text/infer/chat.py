"""`hrm-text generate` and `hrm-text chat`: text in, streamed text out, on one engine.

Multi-turn conversations. HRM-Text is trained on single (condition, instruction, response)
examples, so a conversation is folded into ONE instruction (the same rule is used by the server's
`/v1/chat/completions`, see `fold_messages`):

  * a conversation of a single user message (no system message, no history) is that message,
    unchanged, so a one-turn chat equals `hrm-text generate`;
  * otherwise every message becomes a line block `System: ...`, `User: ...` or `Assistant: ...`
    in order, blocks are joined with one newline, and the last block is the new user message:

        System: be brief
        User: 2+2=
        Assistant: 4
        User: and 3+3=

The prompt fed to the model is then `<boq> <condition tags> folded-instruction <eoq>`.
When the folded conversation no longer fits the context, the chat drops the oldest turns first.

Streaming: the engine calls `Request.on_token` for every generated token; `StreamDecoder` turns
the ids into text deltas, holding back incomplete UTF-8 characters and any tail that could be the
start of a stop string, so what was printed is always a prefix of the final answer.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence, TextIO

from hrm_text.data.records import parse_condition
from hrm_text.data.tokenizer import TextTokenizer
from hrm_text.infer.engine import Engine, Request, Result, SamplingParams

ROLE_PREFIX = {"system": "System: ", "user": "User: ", "assistant": "Assistant: "}


def fold_messages(messages: Sequence[tuple[str, str]]) -> str:
    """Fold (role, content) messages into one instruction text (format in the module docstring).

    Raises ValueError for an empty conversation, an unknown role, or one not ending with a user
    message (the model answers the last user message).
    """
    if not messages:
        raise ValueError("messages must hold at least one message")
    for role, _ in messages:
        if role not in ROLE_PREFIX:
            raise ValueError(f"unknown message role {role!r}; use system, user or assistant")
    if messages[-1][0] != "user":
        raise ValueError("the last message must come from the user")
    if len(messages) == 1:
        return messages[0][1]
    return "\n".join(ROLE_PREFIX[role] + content for role, content in messages)


def fold_history(history: Sequence[tuple[str, str]], message: str, system: str | None = None) -> str:
    """Fold past (user, assistant) turns plus the new user message into one instruction."""
    msgs: list[tuple[str, str]] = [("system", system)] if system else []
    for user, assistant in history:
        msgs += [("user", user), ("assistant", assistant)]
    msgs.append(("user", message))
    return fold_messages(msgs)


class StreamDecoder:
    """Incremental detokenisation for streaming (see module docstring).

    `push(token_id)` returns the new text to show; `finish(final_text)` returns what is left to
    show once the request has finished (text held back for a stop string that never came).
    """

    def __init__(self, decode: Callable[[list[int]], str], stop: Iterable[str] = ()) -> None:
        self.decode = decode
        self.stop = [s for s in stop if s]
        self.ids: list[int] = []
        self.sent = 0  # characters of the decoded text already returned
        self.stopped = False

    def push(self, token_id: int) -> str:
        if self.stopped:
            return ""
        self.ids.append(int(token_id))
        text = self.decode(self.ids)
        if text.endswith("\ufffd"):  # a multi-byte character split across tokens: wait for the rest
            return ""
        cut = len(text)
        for s in self.stop:
            i = text.find(s)
            if i >= 0 and i < cut:
                cut, self.stopped = i, True
        if not self.stopped:
            hold = 0
            for s in self.stop:
                for k in range(min(len(s) - 1, len(text)), 0, -1):
                    if text.endswith(s[:k]):
                        hold = max(hold, k)
                        break
            cut = len(text) - hold
        delta = text[self.sent:cut] if cut > self.sent else ""
        self.sent = max(self.sent, cut)
        return delta

    def finish(self, final_text: str | None) -> str:
        text = final_text if final_text is not None else self.decode(self.ids)
        rest = text[self.sent:]
        self.sent = len(text)
        return rest


def decode_fn(tok: TextTokenizer) -> Callable[[list[int]], str]:
    return lambda ids: tok.decode(ids, skip_special_tokens=True)


def build_prompt(tok: TextTokenizer, instruction: str, condition: str, max_len: int) -> list[int]:
    """Prompt ids; ValueError if the condition is unknown or the prompt leaves no room to answer."""
    ids = tok.encode_prompt(instruction, condition)
    if len(ids) >= max_len:
        raise ValueError(f"prompt of {len(ids)} tokens does not fit the {max_len}-token context (with room for an answer)")
    return ids


def generate_one(
    engine: Engine,
    tok: TextTokenizer,
    instruction: str,
    condition: str = "direct",
    params: SamplingParams | None = None,
    on_text: Callable[[str], None] | None = None,
) -> Result:
    """Generate one answer; `on_text` receives the streamed text deltas (their sum is the answer)."""
    params = params or SamplingParams()
    params.validate()
    ids = build_prompt(tok, instruction, condition, engine.max_len)
    stream = StreamDecoder(decode_fn(tok), params.stop) if on_text is not None else None

    def on_token(t: int) -> None:
        assert stream is not None and on_text is not None
        delta = stream.push(t)
        if delta:
            on_text(delta)

    req = Request(ids, params, 0, on_token if stream is not None else None)
    (res,) = engine.generate([req])
    if stream is not None and on_text is not None:
        rest = stream.finish(res.text)
        if rest:
            on_text(rest)
    return res


HELP = """commands:
  /condition <tags>   set the condition tags, e.g. /condition cot  or  /condition synth,cot
  /reset              forget the conversation so far
  /help               show this help
  /quit               leave (Ctrl-D works too)
anything else is sent to the model as your next message."""


@dataclass
class ChatSession:
    """State of an interactive chat: history, condition, sampling; `handle` processes one input line."""

    engine: Engine
    tok: TextTokenizer
    params: SamplingParams
    condition: str = "direct"
    system: str | None = None
    history: list[tuple[str, str]] = field(default_factory=list)

    def _fit_prompt(self, message: str) -> list[int]:
        """Fold the history; drop the oldest turns until the prompt fits the context."""
        hist = list(self.history)
        while True:
            ids = self.tok.encode_prompt(fold_history(hist, message, self.system), self.condition)
            if len(ids) < self.engine.max_len or not hist:
                break
            hist = hist[1:]
        if len(ids) >= self.engine.max_len:
            raise ValueError(f"message of {len(ids)} tokens does not fit the {self.engine.max_len}-token context")
        self.history = hist
        return ids

    def handle(self, line: str, out: TextIO) -> bool:
        """Process one line of input; return False when the session should end."""
        line = line.rstrip("\n")
        cmd = line.strip()
        if not cmd:
            return True
        if cmd.startswith("/"):
            name, _, arg = cmd.partition(" ")
            if name in ("/quit", "/exit"):
                return False
            if name == "/help":
                out.write(HELP + "\n")
            elif name == "/reset":
                self.history.clear()
                out.write("[conversation cleared]\n")
            elif name == "/condition":
                if not arg.strip():
                    out.write(f"[condition: {self.condition}]\n")
                else:
                    try:
                        tags = parse_condition(arg.strip())
                    except ValueError as e:
                        out.write(f"error: {e}\n")
                    else:
                        self.condition = ",".join(tags)
                        out.write(f"[condition: {self.condition}]\n")
            else:
                out.write(f"unknown command {name}; type /help\n")
            out.flush()
            return True
        try:
            ids = self._fit_prompt(line)
        except ValueError as e:
            out.write(f"error: {e}\n")
            return True
        stream = StreamDecoder(decode_fn(self.tok), self.params.stop)

        def on_token(t: int) -> None:
            delta = stream.push(t)
            if delta:
                out.write(delta)
                out.flush()

        (res,) = self.engine.generate([Request(ids, self.params, 0, on_token)])
        out.write(stream.finish(res.text) + "\n")
        out.flush()
        self.history.append((line, res.text or ""))
        return True


def run_chat(session: ChatSession, stdin: TextIO | None = None, out: TextIO | None = None, prompt: str = "> ") -> None:
    """Read lines until EOF or /quit, streaming each answer to `out`."""
    stdin = stdin or sys.stdin
    out = out or sys.stdout
    interactive = stdin.isatty()
    out.write(f"chat (condition {session.condition}); /help for commands, /quit to leave\n")
    while True:
        if interactive:
            out.write(prompt)
            out.flush()
        line = stdin.readline()
        if not line:  # EOF
            break
        if not session.handle(line, out):
            break
