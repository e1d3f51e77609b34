"""The paper's data recipe: its sampling rules, its mixture categories, and its published data.

The reference pipeline (`sapientinc/data_io`, May 2026) publishes its cleaned output as the Hugging
Face dataset `sapientinc/HRM-Text-data-io-cleaned-20260515`, laid out as

    data/<name>.jsonl                   small sources (gsm8k_train, math_train, no_robots, ...)
    data/Platypus/<subset>.jsonl
    data_clustered/<source>/<file>.parquet   large sources, one file per task where the source has tasks

The reference tokenizer names an entry `relative/path.suffix` with `/` turned into `__`, e.g.
`flan__cot_fsopt_data__<task>.parquet`, and its rules match those names. Our tokenizer names the
same file `flan/cot_fsopt_data__<task>` (relative path, no suffix) when it is given
`data_clustered/` as a source folder, so `paper_rules()` is the reference's list with each prefix
rewritten to that form. Caps, repeats, context 4096 + 1 and the 2-token minimum response are the
reference's.

Nothing here imports above the data floor: the recipe, the download and the category table of
`data sample`'s report use only the files and names.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

PAPER_REPO = "sapientinc/HRM-Text-data-io-cleaned-20260515"
# the snapshot third-party users report downloading (May 2026); `--revision main` takes the newest
PAPER_REVISION = "f033bc0e1a81634385093afc60445a52a7ade64a"
PAPER_FOLDERS = ("data", "data_clustered")
PAPER_CONTEXT = 4096
PAPER_MIN_RESPONSE = 2
PAPER_EPOCHS = 4

# (our prefix, the reference's prefix, max_per_file, repeat); order matters: the first match wins
_PAPER_RULES: tuple[tuple[str, str, int | None, int], ...] = (
    ("SYNTH/", "SYNTH__", 20_000, 1),
    ("flan/cot_", "flan__cot_", None, 1),
    ("flan/", "flan__", 5_000, 1),
    ("dmmath/", "dmmath__", 100_000, 1),
    ("ampsmathematica/", "ampsmathematica__", 10_000, 1),
    ("tasksource/", "tasksource__", 10_000, 1),
    ("openmathinstruct2/", "openmathinstruct2__", 2_000_000, 1),
    ("acereason/", "acereason__", 2_000_000, 1),
    ("openthoughts2/", "openthoughts2__", 500_000, 1),
    ("sudoku_extreme/", "sudoku_extreme__", 1_000_000, 1),
    ("Platypus/", "Platypus__", None, 10),
    ("omnimath", "omnimath.jsonl", None, 10),
    ("gsm8k_train", "gsm8k_train.jsonl", None, 10),
    ("math_train", "math_train.jsonl", None, 10),
    ("webinstruct_verified", "webinstruct_verified.jsonl", None, 10),
    ("no_robots", "no_robots.jsonl", None, 10),
)

# The paper's mixture (tokens available, docs/ARCHITECTURE.md#mixture-and-published-data), by category, in billions of tokens.
PAPER_CATEGORIES: dict[str, float] = {
    "general": 138.7,
    "synth": 21.7,
    "math": 6.8,
    "symbolic": 6.2,
    "reasoning": 2.4,
    "textbook": 0.36,
    "web": 0.38,
}
PAPER_TOTAL_B = 176.5

# Entry-name prefix -> category. The paper names FLAN, Tasksource and NoRobots as general, SYNTH as
# synth, DM math, AMPS and Sudoku as symbolic; the rest is our assignment (marked in the README).
_CATEGORY_PREFIXES: tuple[tuple[str, str], ...] = (
    ("flan/", "general"), ("tasksource/", "general"), ("no_robots", "general"),
    ("SYNTH/", "synth"),
    ("dmmath/", "symbolic"), ("ampsmathematica/", "symbolic"), ("amps_khan", "symbolic"), ("sudoku_extreme/", "symbolic"),
    ("openmathinstruct2/", "math"), ("gsm8k_train", "math"), ("math_train", "math"), ("numinamath", "math"), ("omnimath", "math"),
    ("acereason/", "reasoning"), ("openthoughts2/", "reasoning"), ("natural_reasoning", "reasoning"),
    ("principia_collection", "reasoning"), ("Platypus/", "reasoning"),
    ("textbookreasoning/", "textbook"),
    ("webinstruct_verified", "web"),
)


def category_of(entry: str) -> str | None:
    """The paper category of a tokenized entry name, or None for a source outside the mixture."""
    for prefix, cat in _CATEGORY_PREFIXES:
        if entry.startswith(prefix):
            return cat
    return None


def mixture_lines(meta: dict[str, Any]) -> list[str]:
    """Markdown lines for `data sample`'s report: the sampled mixture by paper category next to the
    paper's. Shares are compared (absolute numbers differ with the corpus); empty when no source
    belongs to a paper category."""
    avail: dict[str, int] = {c: 0 for c in PAPER_CATEGORIES}
    sampled: dict[str, int] = {c: 0 for c in PAPER_CATEGORIES}
    other_avail = other_sampled = 0
    for s in meta["sources"]:
        cat = category_of(s["name"])
        a, e0 = int(s.get("eligible_tokens", s["unique_tokens"])), int(s["tokens_per_epoch"][0])
        if cat is None:
            other_avail += a
            other_sampled += e0
        else:
            avail[cat] += a
            sampled[cat] += e0
    if not any(avail.values()) and not any(sampled.values()):
        return []
    ta = max(1, sum(avail.values()) + other_avail)
    ts = max(1, sum(sampled.values()) + other_sampled)
    out = [
        "",
        "## Mixture vs the paper",
        "",
        f"Paper: tokens available per category (the paper, {PAPER_TOTAL_B:g}B in all). Here: tokens of the",
        "eligible rows (after drops and truncation) and tokens sampled in epoch 0, with repeats.",
        "",
        "| category | paper (B) | paper share | available here | share | sampled epoch 0 | share |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for c, b in PAPER_CATEGORIES.items():
        out.append(f"| {c} | {b:g} | {100 * b / PAPER_TOTAL_B:.1f}% | {avail[c]:,} | {100 * avail[c] / ta:.1f}% | "
                   f"{sampled[c]:,} | {100 * sampled[c] / ts:.1f}% |")
    if other_avail or other_sampled:
        out.append(f"| other (not in the paper's mixture) | - | - | {other_avail:,} | {100 * other_avail / ta:.1f}% | "
                   f"{other_sampled:,} | {100 * other_sampled / ts:.1f}% |")
    return out


def paper_rules(scale: float = 1.0) -> dict[str, Any]:
    """The reference's sampling rules in our rules-file format. `scale` multiplies every cap
    (at least 1 row) so a small fixture shows the caps at work; repeats are never scaled."""
    if scale <= 0:
        raise ValueError(f"scale must be > 0 (got {scale})")
    rules = []
    for ours, _, cap, rep in _PAPER_RULES:
        r: dict[str, Any] = {"prefix": ours}
        if cap is not None:
            r["max_per_file"] = max(1, int(round(cap * scale)))
        if rep != 1:
            r["repeat"] = rep
        rules.append(r)
    return {
        "context": PAPER_CONTEXT,
        "min_response_tokens": PAPER_MIN_RESPONSE,
        "seed": 0,
        "default": {"max_per_file": None, "repeat": 1, "long_context": "truncate"},
        "rules": rules,
    }


@dataclass(frozen=True)
class PaperSource:
    """One source of the published mixture: where its cleaned files live and what to expect."""

    name: str
    path: str  # relative to the downloaded folder
    raw: str  # the raw dataset the reference cleaned
    category: str
    size_gib: float | None  # on disk in the cleaned snapshot, third-party measurement; None: unknown
    rows: str  # expected rows after cleaning: estimate unless marked
    converter: str | None  # `hrm-text data convert` source name


PAPER_SOURCES: tuple[PaperSource, ...] = (
    PaperSource("FLAN", "data_clustered/flan/", "Open-Orca/FLAN", "general", 271.0, "~300M (est.)", "flan"),
    PaperSource("Tasksource", "data_clustered/tasksource/", "tasksource/tasksource-instruct-v0", "general", 0.38, "~2M (est.)", "tasksource"),
    PaperSource("NoRobots", "data/no_robots.jsonl", "HuggingFaceH4/no_robots", "general", None, "~10k (train+test, est.)", "no_robots"),
    PaperSource("SYNTH", "data_clustered/SYNTH/", "PleIAs/SYNTH", "synth", 36.5, "~40M (est.)", "synth"),
    PaperSource("OpenMathInstruct-2", "data_clustered/openmathinstruct2/", "nvidia/OpenMathInstruct-2", "math", 8.2, "~14M cot + direct (est.)", "openmathinstruct2"),
    PaperSource("GSM8K train", "data/gsm8k_train.jsonl", "openai/gsm8k (main, train)", "math", None, "7,473 (dataset card)", "gsm8k"),
    PaperSource("MATH train", "data/math_train.jsonl", "EleutherAI/hendrycks_math (train)", "math", None, "~15k (7,500 cot + direct, est.)", "math"),
    PaperSource("NuminaMath-1.5", "data/numinamath.jsonl", "AI-MO/NuminaMath-1.5", "math", None, "~1M (est.)", "numinamath"),
    PaperSource("Omni-MATH", "data/omnimath.jsonl", "KbsdJames/Omni-MATH (test)", "math", None, "~8.9k (4,428 x 2, est.)", "omnimath"),
    PaperSource("DeepMind mathematics", "data_clustered/dmmath/", "mathematics_dataset-v1.0 (train-easy/medium/hard)", "symbolic", 3.8, "~112M (est.)", "dmmath"),
    PaperSource("AMPS Mathematica", "data_clustered/ampsmathematica/", "amps.tar.gz (mathematica)", "symbolic", 0.41, "~5M (est.)", None),
    PaperSource("AMPS Khan", "data/amps_khan.jsonl", "amps.tar.gz (khan)", "symbolic", None, "~100k (est.)", None),
    PaperSource("Sudoku-Extreme", "data_clustered/sudoku_extreme/", "sapientinc/sudoku-extreme (train.csv)", "symbolic", 0.39, "~3.8M (est.)", "sudoku_extreme"),
    PaperSource("AceReason-1.1-SFT", "data_clustered/acereason/", "nvidia/AceReason-1.1-SFT (math)", "reasoning", 2.1, "~2M (est.)", "acereason"),
    PaperSource("OpenThoughts2", "data_clustered/openthoughts2/", "open-thoughts/OpenThoughts2-1M", "reasoning", 0.65, "~500k (est.)", "openthoughts2"),
    PaperSource("natural_reasoning", "data/natural_reasoning.jsonl", "facebook/natural_reasoning", "reasoning", None, "~1M (est.)", "natural_reasoning"),
    PaperSource("Principia", "data/principia_collection.jsonl", "facebook/principia-collection", "reasoning", None, "unknown", "principia"),
    PaperSource("Platypus (ARB, OpenBookQA, ReClor, SciBench, ScienceQA, TheoremQA)", "data/Platypus/", "garage-bAInd/Open-Platypus subsets", "reasoning", None, "~40k (est.)", None),
    PaperSource("TextbookReasoning", "data_clustered/textbookreasoning/", "MegaScience/TextbookReasoning", "textbook", 0.56, "~1.3M cot + direct (est.)", "textbookreasoning"),
    PaperSource("WebInstruct-verified", "data/webinstruct_verified.jsonl", "TIGER-Lab/WebInstruct-verified", "web", None, "~230k (est.)", "webinstruct_verified"),
)


def recipe_readme(scale: float = 1.0) -> str:
    """README.md of `data recipe paper`: sources, expected sizes, commands."""
    rows = "\n".join(
        f"| {s.name} | `{s.path}` | {s.raw} | {s.category} | {'' if s.size_gib is None else f'{s.size_gib:g}'} | {s.rows} | "
        f"{'`' + s.converter + '`' if s.converter else '-'} |"
        for s in PAPER_SOURCES
    )
    cats = "\n".join(f"| {c} | {b:g} | {100 * b / PAPER_TOTAL_B:.1f}% |" for c, b in PAPER_CATEGORIES.items())
    rules = "\n".join(
        f"| `{ours}` | `{ref}` | {'uncapped' if cap is None else f'{cap:,}'} | {rep}x |" for ours, ref, cap, rep in _PAPER_RULES
    )
    note = "" if scale == 1.0 else f"\n**Caps scaled by {scale:g}** (`--scale`); use scale 1 for the paper's run.\n"
    return f"""# The paper's data recipe

Written by `hrm-text data recipe paper`. `rules.yaml` is the reference pipeline's sampling rules
(`sapientinc/data_io` `prefix_config.yaml`) with its prefixes rewritten to the entry names our
tokenizer gives the published files; context {PAPER_CONTEXT} + 1, responses of at least
{PAPER_MIN_RESPONSE} tokens (with `<eoa>`), {PAPER_EPOCHS} epochs.
{note}
## Commands

```bash
# 1. the published cleaned data (~326 GiB; needs a network and `pip install huggingface_hub`)
hrm-text data download paper --out data/paper            # or --from /path/to/a/local/copy
# 2. a tokenizer (or reuse one): BPE statistics saturate after a few million texts
hrm-text data tokenizer data/paper/data data/paper/data_clustered --out data/tok --max-texts 5000000
# 3. token arrays: pass the two folders, so entry names are `flan/...`, `gsm8k_train`, ...
hrm-text data tokenize data/paper/data data/paper/data_clustered --tokenizer data/tok --out data/tokenized
# 4. optional: decontaminate the cleaned files first (then tokenize the decontaminated copy)
#    hrm-text data decontaminate data/paper --against paper --data-dir $EVAL_DATA_DIR --out data/paper_clean
# 5. the per-epoch sample (report.md compares the mixture with the paper's categories)
hrm-text data sample data/tokenized --rules rules.yaml --epochs {PAPER_EPOCHS} --out /dev/shm/sampled
```

From raw sources instead (bounded memory, see docs/DATA.md): `hrm-text data convert SOURCE RAW_PATH
--out data/paper` writes the same layout, then steps 2-5.

## Rules

| our prefix | reference prefix | rows per file per epoch | repeat |
|---|---|---:|---:|
{rules}

## The paper's mixture (tokens available: the paper's figures)

| category | tokens (B) | share |
|---|---:|---:|
{cats}
| total | {PAPER_TOTAL_B:g} | 100% |

## Sources

Size: GiB on disk in snapshot `{PAPER_REVISION[:7]}` as reported by a third-party user of the
dataset (not measured here). Rows: estimates from the raw datasets' sizes and the reference's
cleaning rules, except where a dataset card is named; they were not counted here (no network).
Category: the paper names FLAN, Tasksource, NoRobots (general), SYNTH, DM math, AMPS and
Sudoku-Extreme (symbolic); the other assignments are ours.

| source | cleaned path | raw dataset | category | size (GiB) | rows | converter |
|---|---|---|---|---:|---|---|
{rows}
"""


def write_recipe(out: str | os.PathLike, scale: float = 1.0) -> list[Path]:
    """Write `rules.yaml` and `README.md` into `out`; returns the paths written."""
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    rules = d / "rules.yaml"
    header = "# The paper's sampling rules (hrm-text data recipe paper); first matching prefix wins.\n"
    rules.write_text(header + yaml.safe_dump(paper_rules(scale), sort_keys=False))
    readme = d / "README.md"
    readme.write_text(recipe_readme(scale))
    return [rules, readme]


class DownloadError(RuntimeError):
    """The published data could not be fetched; the message says why and what to do."""


def download_paper_data(
    out: str | os.PathLike,
    source: str | os.PathLike | None = None,
    repo: str = PAPER_REPO,
    revision: str | None = PAPER_REVISION,
    max_workers: int = 8,
) -> dict[str, Any]:
    """Fetch `data/` and `data_clustered/` of the cleaned dataset into `out`.

    `source`: a local folder with the same layout (a copy, a mounted bucket, a test fixture):
    its record files are hard-linked (copied across filesystems). Otherwise
    `huggingface_hub.snapshot_download` fetches the repository (resumable; real files, not cache
    symlinks, so every tool sees them). Returns {"files", "bytes", "from"}.
    """
    dst = Path(out)
    if source is not None:
        src = Path(source)
        roots = [src / f for f in PAPER_FOLDERS if (src / f).is_dir()]
        if not roots:
            raise DownloadError(f"{src} has neither data/ nor data_clustered/ (the layout of {repo})")
        n = size = 0
        for root in roots:
            for f in sorted(root.rglob("*")):
                if not (f.is_file() and f.suffix in (".jsonl", ".parquet")):
                    continue
                t = dst / f.relative_to(src)
                t.parent.mkdir(parents=True, exist_ok=True)
                if t.exists():
                    t.unlink()
                try:
                    os.link(f, t)
                except OSError:
                    shutil.copy2(f, t)
                n += 1
                size += f.stat().st_size
        return {"files": n, "bytes": size, "from": str(src)}
    try:
        from huggingface_hub import snapshot_download  # lazy: optional, only for network downloads
    except ImportError:
        raise DownloadError("downloading needs huggingface_hub (`pip install huggingface_hub`), or pass --from LOCAL_COPY") from None
    try:
        path = snapshot_download(
            repo_id=repo, repo_type="dataset", revision=revision, local_dir=str(dst),
            allow_patterns=[f"{f}/**" for f in PAPER_FOLDERS], max_workers=max_workers,
        )
    except Exception as e:  # offline, unknown revision, rate limit: one readable line
        raise DownloadError(
            f"could not download {repo} (revision {revision}): {type(e).__name__}: {str(e)[:300]}. "
            "Check the network (HF_HUB_OFFLINE must be unset) or pass --from LOCAL_COPY."
        ) from None
    files = [f for fo in PAPER_FOLDERS for f in (Path(path) / fo).rglob("*") if f.is_file()]
    return {"files": len(files), "bytes": sum(f.stat().st_size for f in files), "from": f"hf:{repo}@{revision}"}
