"""`hrm-text data sample`: stratified per-epoch sampling of a tokenized corpus
(docs/ARCHITECTURE.md#stratified-sampling).

A web-scale mixture is dominated by a few huge sources; training on it as-is would drown the small,
valuable ones. The sampler therefore decides, per source file and per epoch, how many rows go in:

    context: 4096                # an example may hold context + 1 tokens (prompt + response + <eoa>)
    min_response_tokens: 2       # counted with <eoa>: 2 = at least one real response token
    seed: 0
    default: {max_per_file: null, repeat: 1, long_context: truncate}
    rules:                       # ordered; the first rule whose prefix matches the entry name wins
      - {prefix: "dm_math/", max_per_file: 100000}
      - {prefix: "sudoku/", max_per_file: 1000000, long_context: drop}
      - {prefix: "arith/", repeat: auto}   # auto = 10x for sources of at most 50,000 rows, else 1x

* `max_per_file` caps the distinct rows a source contributes per epoch; `repeat` then includes each
  sampled row that many times in the epoch (upsampling small sets).
* `long_context`: an example longer than context + 1 is `drop`ped, or (`truncate`) its response is
  cut to fit; a cut response loses its `<eoa>` (the model should not learn to stop mid-answer). If
  even the prompt plus `min_response_tokens` does not fit, the row is dropped under both modes.
* Every epoch is a fresh seeded sample; rows never sampled before come first, so coverage widens
  from epoch to epoch (once a source is fully covered, samples are uniform again).

The output directory is self-contained (tokens are copied, memory-mapped at training time; see
`loader.SampledData`), and gets `metadata.json` plus a markdown `report.md`.
"""

from __future__ import annotations

import json
import shutil
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import yaml

from .loader import SAMPLED_FORMAT_VERSION, _mix_seed
from .paper import mixture_lines
from .tokenize import NpyAppender, TokenizedEntry, load_manifest, smallest_uint

SMALL_SET_ROWS = 50_000
SMALL_SET_REPEAT = 10


class RulesError(ValueError):
    """A problem in the rules file; the message names the rule and key."""


@dataclass
class Rule:
    prefix: str = ""
    max_per_file: int | None = None
    repeat: int | str = 1  # int >= 1 or "auto"
    long_context: str = "truncate"

    def resolve_repeat(self, rows: int) -> int:
        if self.repeat == "auto":
            return SMALL_SET_REPEAT if rows <= SMALL_SET_ROWS else 1
        return int(self.repeat)


@dataclass
class Rules:
    context: int = 4096
    min_response_tokens: int = 2
    seed: int = 0
    default: Rule = field(default_factory=Rule)
    rules: list[Rule] = field(default_factory=list)

    @property
    def max_len(self) -> int:
        return self.context + 1

    def match(self, name: str) -> tuple[int, Rule]:
        """(rule index or -1 for default, rule): first prefix match wins."""
        for i, r in enumerate(self.rules):
            if name.startswith(r.prefix):
                return i, r
        return -1, self.default


_RULE_KEYS = {"prefix", "max_per_file", "repeat", "long_context"}
_TOP_KEYS = {"context", "min_response_tokens", "seed", "default", "rules"}


def _rule(d: Any, where: str, need_prefix: bool) -> Rule:
    if not isinstance(d, dict):
        raise RulesError(f"{where} must be a mapping with keys {sorted(_RULE_KEYS)}")
    unknown = set(d) - _RULE_KEYS
    if unknown:
        raise RulesError(f"{where}: unknown key {sorted(unknown)[0]!r}; allowed: {', '.join(sorted(_RULE_KEYS))}")
    if need_prefix and not isinstance(d.get("prefix"), str):
        raise RulesError(f"{where}: needs a string `prefix` (use \"\" to match everything)")
    r = Rule(prefix=str(d.get("prefix", "")))
    if d.get("max_per_file") is not None:
        v = d["max_per_file"]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise RulesError(f"{where}: max_per_file must be a positive integer or null (got {v!r})")
        r.max_per_file = v
    if "repeat" in d:
        v = d["repeat"]
        if v != "auto" and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise RulesError(f"{where}: repeat must be a positive integer or \"auto\" (got {v!r})")
        r.repeat = v
    if "long_context" in d:
        if d["long_context"] not in ("truncate", "drop"):
            raise RulesError(f"{where}: long_context must be truncate or drop (got {d['long_context']!r})")
        r.long_context = d["long_context"]
    return r


def parse_rules(obj: dict[str, Any] | None) -> Rules:
    """Validate a rules mapping (as loaded from YAML)."""
    obj = obj or {}
    if not isinstance(obj, dict):
        raise RulesError("the rules file must hold a mapping (context, min_response_tokens, seed, default, rules)")
    unknown = set(obj) - _TOP_KEYS
    if unknown:
        raise RulesError(f"unknown top-level key {sorted(unknown)[0]!r}; allowed: {', '.join(sorted(_TOP_KEYS))}")
    rules = Rules()
    for k in ("context", "min_response_tokens", "seed"):
        if k in obj:
            v = obj[k]
            if isinstance(v, bool) or not isinstance(v, int) or v < (0 if k == "seed" else 1):
                raise RulesError(f"{k} must be a positive integer (got {v!r})")
            setattr(rules, k, v)
    if "default" in obj:
        rules.default = _rule(obj["default"], "default", need_prefix=False)
    rl = obj.get("rules") or []
    if not isinstance(rl, list):
        raise RulesError("rules must be a list of mappings")
    rules.rules = [_rule(d, f"rules[{i}]", need_prefix=True) for i, d in enumerate(rl)]
    return rules


def load_rules(path: str | Path | None) -> Rules:
    if path is None:
        return Rules()
    p = Path(path)
    if not p.is_file():
        raise RulesError(f"rules file {p} does not exist")
    try:
        obj = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise RulesError(f"rules file {p} is not valid YAML: {e}") from None
    try:
        return parse_rules(obj)
    except RulesError as e:
        raise RulesError(f"{p}: {e}") from None


def select_epochs(n: int, k: int, epochs: int, seed: int) -> list[np.ndarray]:
    """Per epoch, `k` distinct indices of range(n): unseen ones first, each epoch freshly seeded."""
    seen = np.zeros(n, dtype=bool)
    out = []
    for e in range(epochs):
        rng = np.random.default_rng(_mix_seed(seed, e))
        if seen.all():
            seen[:] = False
        unseen = np.flatnonzero(~seen)
        take = unseen[rng.permutation(len(unseen))[:k]]
        if len(take) < k:
            pool = np.flatnonzero(seen)
            extra = pool[rng.permutation(len(pool))[: k - len(take)]]
            take = np.concatenate([take, extra])
        seen[take] = True
        out.append(np.sort(take))
    return out


def _gather(tokens: np.ndarray, starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """tokens[s:s+l] for every (s, l), concatenated, without a Python loop."""
    total = int(lens.sum())
    if total == 0:
        return np.zeros(0, dtype=tokens.dtype)
    base = np.repeat(starts.astype(np.int64) - np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64), lens)
    return np.asarray(tokens[base + np.arange(total, dtype=np.int64)])


def sample_corpus(
    tokenized_dir: str | Path,
    out_dir: str | Path,
    rules: Rules,
    epochs: int,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the sampler; writes the output directory and returns its metadata."""
    if epochs < 1:
        raise ValueError("epochs must be >= 1")
    src = Path(tokenized_dir)
    manifest = load_manifest(src)
    if not manifest.get("entries"):
        raise FileNotFoundError(f"{src} holds no tokenized entries (run `hrm-text data tokenize` first)")
    tokinfo = manifest["tokenizer"]
    out = Path(out_dir)
    if out.exists():
        if (out / "metadata.json").exists() or not any(out.iterdir()):
            shutil.rmtree(out)
        else:
            raise FileExistsError(f"{out} exists and is not a sampled-data folder; refusing to overwrite it")
    (out / "epochs").mkdir(parents=True)
    tdt = smallest_uint(int(tokinfo["vocab_size"]) - 1)
    w_tokens = NpyAppender(out / "tokens.npy", tdt)
    w_offsets = NpyAppender(out / "offsets.npy", np.uint64)
    w_inst = NpyAppender(out / "inst_len.npy", np.uint64)
    w_len = NpyAppender(out / "lengths.npy", np.uint64)
    w_src = NpyAppender(out / "source.npy", np.uint64)
    w_offsets.append(np.zeros(1, dtype=np.uint64))
    epoch_lists: list[list[np.ndarray]] = [[] for _ in range(epochs)]
    sources: list[dict[str, Any]] = []
    n_examples = 0
    n_tokens = 0
    L, m = rules.max_len, rules.min_response_tokens
    for si, name in enumerate(sorted(manifest["entries"])):
        if progress:
            progress(name)
        ent = TokenizedEntry(src, name)
        ri, rule = rules.match(name)
        il = np.asarray(ent.inst_len, dtype=np.int64)
        rl = np.asarray(ent.resp_len, dtype=np.int64)
        too_long = il + rl > L
        short = rl < m
        if rule.long_context == "drop":
            ok = ~too_long & ~short
        else:
            ok = ~short & (~too_long | (il + m <= L))
        elig = np.flatnonzero(ok)
        N = len(elig)
        k = N if rule.max_per_file is None else min(rule.max_per_file, N)
        rep = rule.resolve_repeat(N)
        seed = _mix_seed(rules.seed, zlib.crc32(name.encode()))
        per_epoch = select_epochs(N, k, epochs, seed) if N else [np.zeros(0, dtype=np.int64)] * epochs
        union = np.unique(np.concatenate(per_epoch)) if N else np.zeros(0, dtype=np.int64)
        rows = elig[union]
        new_len = np.minimum(il[rows] + rl[rows], L)
        starts = np.asarray(ent.inst_start, dtype=np.int64)[rows]
        for c in range(0, len(rows), 1 << 16):
            sl = slice(c, c + (1 << 16))
            w_tokens.append(_gather(ent.tokens, starts[sl], new_len[sl]))
        w_offsets.append(n_tokens + np.cumsum(new_len))
        w_inst.append(il[rows])
        w_len.append(new_len)
        w_src.append(np.full(len(rows), si, dtype=np.uint64))
        gid = np.full(N, -1, dtype=np.int64)
        gid[union] = n_examples + np.arange(len(union))
        ep_tokens = []
        for e in range(epochs):
            ids = gid[per_epoch[e]]
            epoch_lists[e].append(np.repeat(ids, rep) if rep > 1 else ids)
            ep_tokens.append(int(new_len[np.searchsorted(union, per_epoch[e])].sum()) * rep)
        sources.append(
            {
                "name": name,
                "rule": ri,
                "rule_prefix": rule.prefix if ri >= 0 else "(default)",
                "max_per_file": rule.max_per_file,
                "repeat": rep,
                "long_context": rule.long_context,
                "rows": len(ent),
                "eligible": N,
                "dropped_short_response": int(short.sum()),
                "dropped_long": int((~ok & ~short).sum()),
                "truncated": int((too_long & ok).sum()),
                "rows_per_epoch": k * rep,
                "unique_rows": len(union),
                "coverage": (len(union) / N) if N else 0.0,
                "tokens_per_epoch": ep_tokens,
                "unique_tokens": int(new_len.sum()),
                "eligible_tokens": int(np.minimum(il[elig] + rl[elig], L).sum()),
            }
        )
        n_examples += len(union)
        n_tokens += int(new_len.sum())
    for w in (w_tokens, w_offsets, w_inst, w_len, w_src):
        w.close()
    for name in ("inst_len", "lengths", "source"):
        from .tokenize import shrink_npy

        shrink_npy(out / f"{name}.npy")
    idt = smallest_uint(max(n_examples - 1, 0))
    epoch_sizes = []
    for e in range(epochs):
        ids = np.concatenate(epoch_lists[e]) if epoch_lists[e] else np.zeros(0, dtype=np.int64)
        np.save(out / "epochs" / f"epoch_{e:04d}.npy", ids.astype(idt))
        epoch_sizes.append(int(len(ids)))
    meta = {
        "format_version": SAMPLED_FORMAT_VERSION,
        "num_examples": n_examples,
        "num_epochs": epochs,
        "unique_tokens": n_tokens,
        "epoch_examples": epoch_sizes,
        "epoch_tokens": [sum(s["tokens_per_epoch"][e] for s in sources) for e in range(epochs)],
        "tokenized_dir": str(src.resolve()),
        "tokenizer_dir": tokinfo["dir"],
        "tokenizer_sha256": tokinfo["sha256"],
        "vocab_size": tokinfo["vocab_size"],
        "pad_id": tokinfo["pad_id"],
        "boq_id": tokinfo["boq_id"],
        "eoq_id": tokinfo["eoq_id"],
        "eoa_id": tokinfo["eoa_id"],
        "condition_ids": tokinfo["condition_ids"],
        "context": rules.context,
        "max_len": rules.max_len,
        "min_response_tokens": rules.min_response_tokens,
        "seed": rules.seed,
        "rules": {"default": asdict(rules.default), "rules": [asdict(r) for r in rules.rules]},
        "sources": sources,
    }
    (out / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n")
    (out / "report.md").write_text(render_report(meta))
    return meta


def render_report(meta: dict[str, Any]) -> str:
    """Markdown: rows and tokens per source and epoch, coverage, and what was dropped and why."""
    E = meta["num_epochs"]
    lines = [
        "# Sampled data report",
        "",
        f"- examples stored (unique rows over all epochs): {meta['num_examples']:,}",
        f"- unique tokens: {meta['unique_tokens']:,}",
        f"- epochs: {E}; tokens per epoch: {', '.join(f'{t:,}' for t in meta['epoch_tokens'])}"
        f" (total {sum(meta['epoch_tokens']):,})",
        f"- context: {meta['context']} (+1); min response tokens (with <eoa>): {meta['min_response_tokens']}; seed {meta['seed']}",
        "",
        "| source | rule | rows | eligible | short resp. dropped | too long dropped | truncated | cap | repeat | rows/epoch | tokens/epoch (e0) | unique rows | coverage |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in meta["sources"]:
        cap = "-" if s["max_per_file"] is None else f"{s['max_per_file']:,}"
        lines.append(
            f"| {s['name']} | {s['rule_prefix']} ({s['long_context']}) | {s['rows']:,} | {s['eligible']:,} | "
            f"{s['dropped_short_response']:,} | {s['dropped_long']:,} | {s['truncated']:,} | {cap} | {s['repeat']} | "
            f"{s['rows_per_epoch']:,} | {s['tokens_per_epoch'][0]:,} | {s['unique_rows']:,} | {100 * s['coverage']:.1f}% |"
        )
    return "\n".join(lines + mixture_lines(meta)) + "\n"
