"""`hrm-text data builtin`: an instruction-response corpus that needs no network.

Why: a first run (and CI) must work on an offline laptop, and its held-out sets must measure
something a small model can actually learn in minutes. Three generators, all deterministic given
the seed (each chunk of work has its own seed, so the result does not depend on the worker count):

* Arithmetic. Quickstart: a + b and a - b with 1-3 digit operands (digit count uniform per
  operand, subtraction ordered so the result is >= 0), zero-padded to fixed width: prompt
  `123+045=`, response `0168` (operands 3 digits, answer 4). With every digit at a fixed offset the
  `tiny` model reaches > 50% held-out exact-match in ~200 steps; unpadded (`123+45=` -> `168`, the
  format of the larger sizes) it stays under 10% in the same budget.
  Every problem is assigned to train or held-out by a hash of its text (2% held out), so the
  same-distribution held-out set contains only problems the train file never has. A second held-out
  set uses longer operands (length generalisation). Larger sizes use more digits. A third,
  `arith_carry`, holds the hardest sums of the training lengths: additions of up-to-d-digit operands
  (d = the widest training operand) in which every one of the d columns carries, so one carry
  runs from the units into the new leading digit (`478+596=1074`). Its GRPO prompt file `rl/arith_carry.jsonl`
  draws the same kind of problem from the train partition, so RL prompts and held-out rows never
  meet (docs/POST_TRAINING.md).
* DeepMind mathematics (PyPI `mathematics-dataset` 1.0.1). Train modules are per-module train
  files; the package's `interpolate` and `extrapolate` regimes are held out. The package predates
  numpy 2 and current sympy; `_dm_init` installs shims (see docs/DATA.md): the sympy diophantine
  attribute, `np.object`, and `ndarray.itemset` (via an ndarray subclass used only inside the
  package's polynomial sampler), so all 56 train modules run. A train question that also occurs in
  a held-out set is removed.
* Sudoku 9x9. Solved grids come from `py-sudoku` (seeded); cells are removed in random order while
  the puzzle keeps exactly one solution (checked with our own bitmask solver; py-sudoku's own
  blanking often leaves several solutions, which would make exact-match scoring meaningless).
  Train puzzles keep 34-45 givens; the held-out hard split keeps 24-30 givens and uses disjoint seeds.

Layout (see `builtin_heldout_files`):

    OUT/train/arith.jsonl
    OUT/train/dm_math/<module>.jsonl
    OUT/train/sudoku.jsonl
    OUT/heldout/arith_test.jsonl            same distribution as train, unseen problems
    OUT/heldout/arith_long.jsonl            longer operands
    OUT/heldout/arith_carry.jsonl           additions whose carry crosses every column (hardest in-format sums)
    OUT/rl/arith_carry.jsonl                the same kind of problem from the train partition: GRPO prompts
                                            (outside train/, so tokenize/SFT never read it)
    OUT/heldout/dm_math_interpolate.jsonl   all modules, with a "module" field
    OUT/heldout/dm_math_extrapolate.jsonl
    OUT/heldout/sudoku_hard.jsonl
    OUT/train/nl_docs.jsonl, OUT/heldout/nl_docs_test.jsonl   optional part `nl_docs` (nl_docs.py):
                                            docstring question/answer pairs, 5% of questions held out
    OUT/builtin.json                        size, seed, row counts, shims/skips
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import sys
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from hrm_text.config import ConfigError


@dataclass(frozen=True)
class BuiltinSize:
    arith_train: int
    arith_test: int
    arith_long: int
    arith_digits: tuple[int, int]  # operand digit range of train / test
    arith_long_digits: tuple[int, int]
    dm_train_per_module: int
    dm_test_per_module: int
    sudoku_train: int
    sudoku_hard: int
    # zero-pad operands to the widest operand and the answer to one digit more (`045+123=` -> `0168`):
    # every digit then sits at a fixed offset, which a small model learns from far fewer examples
    arith_pad: bool = False
    # `arith_carry`: held-out rows / GRPO prompt rows (the train partition) of full-carry additions
    arith_carry: int = 1_000
    arith_carry_rl: int = 5_000
    # optional part `nl_docs` (natural language, see nl_docs.py): at most this many pairs per side
    nl_train: int = 5_000
    nl_test: int = 500


SIZES: dict[str, BuiltinSize] = {
    # a few MB, < 30 s on 2 cores; learnable by a ~1.5M-parameter model in minutes
    "quickstart": BuiltinSize(100_000, 1_000, 1_000, (1, 3), (4, 5), 30, 6, 200, 50, arith_pad=True),
    # the HRM-vs-Transformer study (docs/STUDIES.md): enough distinct rows for ~10-40M training
    # tokens, small enough (< 64 MiB sampled) to carry to a GPU machine; padded arithmetic so a
    # 20-60M model learns it within the budget
    "study": BuiltinSize(400_000, 1_000, 1_000, (1, 4), (5, 6), 400, 20, 3_000, 200, arith_pad=True,
                         nl_train=40_000, nl_test=1_000),
    "small": BuiltinSize(1_000_000, 2_000, 2_000, (1, 5), (6, 8), 2_000, 200, 5_000, 500, nl_train=50_000, nl_test=1_000),
    "medium": BuiltinSize(5_000_000, 5_000, 5_000, (1, 8), (9, 12), 20_000, 1_000, 50_000, 1_000, nl_train=10**7, nl_test=2_000),
    "full": BuiltinSize(20_000_000, 10_000, 10_000, (1, 10), (11, 15), 200_000, 10_000, 1_000_000, 10_000, nl_train=10**7, nl_test=2_000),
}
PARTS = ("arith", "dm_math", "sudoku", "nl_docs")
DEFAULT_PARTS = ("arith", "dm_math", "sudoku")  # nl_docs is opt-in: it reads every installed package (minutes)

# modules each part imports (all from the `data` extra), checked before any work starts
PART_MODULES: dict[str, tuple[tuple[str, str], ...]] = {
    "dm_math": (("mathematics_dataset", "mathematics-dataset"), ("sympy", "sympy"), ("absl", "absl-py")),
    "sudoku": (("sudoku", "py-sudoku"),),
}

ARITH_HELDOUT_MODULO = 50  # crc32(problem) % 50 == 0 -> held-out partition (2%)
CHUNK = 2_000  # rows per parallel task


def _seed(*parts: Any) -> int:
    return zlib.crc32(json.dumps(parts).encode()) & 0x7FFFFFFF


# ------------------------------------------------------------------------------------------------
# arithmetic


def _arith_problem(rng: random.Random, digits: tuple[int, int], pad: bool = False) -> tuple[str, str]:
    def operand() -> int:
        d = rng.randint(digits[0], digits[1])
        return rng.randint(0 if d == 1 else 10 ** (d - 1), 10**d - 1)

    a, b = operand(), operand()
    op, c = "+", a + b
    if rng.random() >= 0.5:
        if a < b:
            a, b = b, a
        op, c = "-", a - b
    if not pad:
        return f"{a}{op}{b}=", str(c)
    w = digits[1]
    return f"{a:0{w}d}{op}{b:0{w}d}=", f"{c:0{w + 1}d}"


_CARRY_PAIRS = {carry_in: [(x, y) for x in range(10) for y in range(10) if x + y + carry_in >= 10] for carry_in in (0, 1)}


def _arith_carry_problem(rng: random.Random, digits: int, pad: bool = False) -> tuple[str, str]:
    """a + b with operands below 10**digits in which every one of the `digits` columns carries: the
    column's digit pair is uniform among the pairs that carry (given the carry coming in), so the
    carry runs from the units digit into a new leading 1."""
    a = b = 0
    for i in range(digits):
        x, y = rng.choice(_CARRY_PAIRS[1 if i else 0])  # above the units, the carry from below adds 1
        a, b = a + x * 10**i, b + y * 10**i
    if not pad:
        return f"{a}+{b}=", str(a + b)
    return f"{a:0{digits}d}+{b:0{digits}d}=", f"{a + b:0{digits + 1}d}"


def _arith_carry_rows(seed: int, heldout: bool, n: int, digits: int, pad: bool) -> list[dict[str, str]]:
    """`n` distinct full-carry additions from the held-out (or the train) partition of the hash split."""
    rng = random.Random(seed)
    rows: list[dict[str, str]] = []
    seen: set[str] = set()
    tries = 0
    while len(rows) < n and tries < 200 * n + 100_000:  # a tiny space (1-digit sizes) may hold fewer than n
        tries += 1
        q, a = _arith_carry_problem(rng, digits, pad)
        if _is_heldout_problem(q) != heldout or q in seen:
            continue
        seen.add(q)
        rows.append({"condition": "direct", "instruction": q, "response": a})
    return rows


def _is_heldout_problem(text: str) -> bool:
    return zlib.crc32(text.encode()) % ARITH_HELDOUT_MODULO == 0


def _arith_chunk(args: tuple[int, str, int, tuple[int, int]] | tuple[int, str, int, tuple[int, int], bool]) -> list[dict[str, str]]:
    seed, split, n, digits = args[:4]
    pad = bool(args[4]) if len(args) > 4 else False
    rng = random.Random(seed)
    rows = []
    seen: set[str] = set()
    while len(rows) < n:
        q, a = _arith_problem(rng, digits, pad)
        if split == "train" and _is_heldout_problem(q):
            continue
        if split == "test":
            if not _is_heldout_problem(q) or q in seen:
                continue
            seen.add(q)
        if split == "long" and q in seen:
            continue
        if split == "long":
            seen.add(q)
        rows.append({"condition": "direct", "instruction": q, "response": a})
    return rows


# ------------------------------------------------------------------------------------------------
# DeepMind mathematics

_DM = None
BROKEN_ON_NUMPY2 = "np.object and ndarray.itemset removed in numpy 2 (used by mathematics_dataset.sample.polynomials)"


class _ItemsetArray(np.ndarray):
    """ndarray with the `itemset` method numpy 2 removed (only used inside the DM package)."""

    def itemset(self, index: Any, value: Any) -> None:
        if not isinstance(index, tuple):
            index = np.unravel_index(index, self.shape) if self.ndim > 1 else (index,)
        # a full index tuple stores the object itself (a list stays a list in object arrays)
        np.ndarray.__setitem__(self, tuple(int(i) for i in index), value)


class _NumpyShim:
    """Stands in for `numpy` inside mathematics_dataset.sample.polynomials."""

    object = object

    def __getattr__(self, name: str) -> Any:
        return getattr(np, name)

    @staticmethod
    def zeros(*a: Any, **k: Any) -> np.ndarray:
        return np.zeros(*a, **k).view(_ItemsetArray)

    @staticmethod
    def empty(*a: Any, **k: Any) -> np.ndarray:
        return np.empty(*a, **k).view(_ItemsetArray)


def _pop_symbol_in_order(self: Any) -> str:
    """`mathematics_dataset`'s `Context.pop` draws a variable name with `random.choice(list(a_set))`;
    a set of strings iterates in an order that changes with each process's hash seed, so the same
    seed gave other letters in every run (61 of 127 modules). Same draw over the sorted set."""
    from mathematics_dataset.util import composition

    allowed = composition._ALLOWED_SYMBOLS - self._relation_symbols - self._self_symbols - self._child_symbols
    if not allowed:
        raise ValueError("Ran out of symbols")
    symbol = random.choice(sorted(allowed))
    self._self_symbols.add(symbol)
    return symbol


def _expand_entities_in_order(context: Any, **kwargs: Any) -> tuple[str, dict[str, Any]]:
    """`mathematics_dataset`'s `expand_entities`, with its entities de-duplicated in a fixed order
    before the seeded shuffle: the original collects them in a set of objects (hashed by memory
    address), so the order of the "Let ..." definitions changed from run to run."""
    from mathematics_dataset.util import composition

    kwargs = kwargs.copy()
    entities = list(context.child_entities)
    for key, value in kwargs.items():
        if isinstance(value, composition.Entity):
            entities.append(value)
            kwargs[key] = value.handle
    entities = list(dict.fromkeys(entities))
    random.shuffle(entities)
    parts = []
    for entity in entities:
        parts.append(entity.child_description)
        if not entity.expression_used:
            parts.append(entity.description)
    return " ".join(part for part in parts if part), kwargs


def _dm_init() -> Any:
    """Import mathematics_dataset with the shims (idempotent, per process)."""
    global _DM
    if _DM is not None:
        return _DM
    import importlib
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    import sympy.solvers.diophantine  # noqa: F401

    mod = sys.modules["sympy.solvers.diophantine"]
    if not hasattr(mod, "base_solution_linear"):
        mod.base_solution_linear = importlib.import_module("sympy.solvers.diophantine.diophantine").base_solution_linear
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS(["hrm-text"], known_only=True)
    from mathematics_dataset import generate
    from mathematics_dataset.sample import polynomials
    from mathematics_dataset.util import composition

    polynomials.np = _NumpyShim()
    composition.Context.pop = _pop_symbol_in_order
    composition.expand_entities = _expand_entities_in_order
    generate.init_modules()
    _DM = generate
    return generate


def dm_module_names() -> dict[str, list[str]]:
    g = _dm_init()
    return {regime: list(mods) for regime, mods in g.filtered_modules.items()}


def _dm_chunk(args: tuple[int, str, str, int]) -> tuple[list[dict[str, str]], str | None]:
    seed, regime, module, n = args
    g = _dm_init()
    from sympy.core import random as sympy_random  # loaded by _dm_init; sympy comes with the `data` extra
    fn = g.filtered_modules[regime][module]
    random.seed(seed)
    np.random.seed(seed % (2**32))
    sympy_random.seed(seed)  # sympy's own generator (randprime), seeded from the OS otherwise
    rows = []
    try:
        for _ in range(n):
            problem, _ = g.sample_from_module(fn)
            rows.append({"condition": "direct", "instruction": str(problem.question), "response": str(problem.answer), "module": module})
    except Exception as e:  # a module broken on this stack: reported, skipped
        return rows, f"{type(e).__name__}: {str(e)[:200]}"
    return rows, None


# ------------------------------------------------------------------------------------------------
# Sudoku

_ALL = 0x1FF
_PEERS: list[list[int]] = []
for _c in range(81):
    _r, _k = divmod(_c, 9)
    _b = (_r // 3) * 3 * 9 + (_k // 3) * 3
    _p = {_r * 9 + i for i in range(9)} | {i * 9 + _k for i in range(9)} | {_b + i * 9 + j for i in range(3) for j in range(3)}
    _p.discard(_c)
    _PEERS.append(sorted(_p))


def _free_digits(g: list[int], c: int) -> int:
    """Bitmask of the digits not used by any peer of cell `c` (bit d-1 set = digit d possible)."""
    used = 0
    for p in _PEERS[c]:
        if g[p]:
            used |= 1 << (g[p] - 1)
    return _ALL & ~used


def count_solutions(grid: list[int], limit: int = 2) -> int:
    """Number of solutions of a 9x9 grid (0 = empty), stopping at `limit`. Bitmask DFS with MRV."""
    g = list(grid)
    for c in range(81):
        if g[c] == 0:
            if _free_digits(g, c) == 0:
                return 0
        elif any(g[p] == g[c] for p in _PEERS[c]):
            return 0

    count = 0

    def solve() -> bool:
        nonlocal count
        best, best_mask, bc = -1, 0, 10
        for c in range(81):  # the empty cell with the fewest candidates (MRV)
            if g[c] == 0:
                m = _free_digits(g, c)
                n = bin(m).count("1")
                if n < bc:
                    best, best_mask, bc = c, m, n
                    if n <= 1:
                        break
        if best < 0:
            count += 1
            return count >= limit
        m = best_mask
        while m:
            bit = m & -m
            m ^= bit
            g[best] = bit.bit_length()
            if solve():
                g[best] = 0
                return True
        g[best] = 0
        return False

    solve()
    return count


def _sudoku_puzzle(seed: int, givens: tuple[int, int]) -> tuple[str, str]:
    from sudoku import Sudoku

    solved = Sudoku(3, seed=seed).solve().board
    sol = [v for row in solved for v in row]
    rng = random.Random(seed)
    target = rng.randint(*givens)
    grid = list(sol)
    order = list(range(81))
    rng.shuffle(order)
    filled = 81
    for c in order:
        if filled <= target:
            break
        v = grid[c]
        grid[c] = 0
        if count_solutions(grid, 2) != 1:
            grid[c] = v
        else:
            filled -= 1
    fmt = lambda g: "\n".join("".join(str(x) if x else "." for x in g[r * 9 : r * 9 + 9]) for r in range(9))  # noqa: E731
    return fmt(grid), fmt(sol)


def _sudoku_chunk(args: tuple[int, str, int]) -> list[dict[str, str]]:
    seed, split, n = args
    givens = (24, 30) if split == "hard" else (34, 45)
    rows = []
    for i in range(n):
        q, a = _sudoku_puzzle(seed + i, givens)
        rows.append({"condition": "direct", "instruction": "Solve this sudoku (. = empty):\n" + q, "response": a})
    return rows


# ------------------------------------------------------------------------------------------------
# driver


def _write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".jsonl.tmp")
    n = 0
    with open(tmp, "w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
            n += 1
    os.replace(tmp, path)
    return n


def _chunks(total: int, size: int = CHUNK) -> list[int]:
    return [min(size, total - i) for i in range(0, total, size)]


def _dm_chunk_size(n: int) -> int:
    """Small chunks for small counts: a few DM modules take ~0.5 s per sample, and one task per
    module would leave the other cores idle behind them."""
    return max(2, min(500, n // 4))


def builtin_heldout_files(corpus_dir: str | os.PathLike) -> dict[str, Path]:
    """Held-out evaluation files of a builtin corpus: name -> path (only those that exist)."""
    d = Path(corpus_dir) / "heldout"
    names = ("arith_test", "arith_long", "dm_math_interpolate", "dm_math_extrapolate", "sudoku_hard", "nl_docs_test")
    return {n: d / f"{n}.jsonl" for n in names if (d / f"{n}.jsonl").is_file()}


def missing_packages(parts: Iterable[str]) -> dict[str, list[str]]:
    """The pip names of the packages that `parts` need and this Python cannot import, each with
    the parts that need it (in the order given)."""
    names: dict[str, list[str]] = {}
    for p in parts:
        for module, package in PART_MODULES.get(p, ()):
            if importlib.util.find_spec(module) is None:
                names.setdefault(package, []).append(p)
    return names


def write_builtin_corpus(
    out_dir: str | os.PathLike,
    size: str = "quickstart",
    seed: int = 0,
    workers: int | None = None,
    parts: Iterable[str] = DEFAULT_PARTS,
    progress: Callable[[str, int], None] | None = None,
    nl_roots: list[Path] | None = None,
) -> dict[str, Any]:
    """Generate the builtin corpus into `out_dir`; returns the manifest written to builtin.json.

    `progress(stage, rows)` is called as chunks complete (for a progress bar). `nl_roots`: the
    folders the `nl_docs` part reads (default: the standard library and site-packages).
    """
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")
    parts = tuple(parts)
    for p in parts:
        if p not in PARTS:
            raise ValueError(f"unknown part {p!r}; parts: {', '.join(PARTS)}")
    missing = missing_packages(parts)
    if missing:
        needs = "; ".join(f"{pkg} (part {', '.join(ps)})" for pkg, ps in missing.items())
        raise ConfigError(f"the built-in corpus needs packages this Python lacks: {needs}. pip install 'hrm-text[data]'")
    S = SIZES[size]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    workers = workers or min(os.cpu_count() or 1, 16)
    t0 = time.time()
    manifest: dict[str, Any] = {"size": size, "seed": seed, "spec": asdict(S), "files": {}, "dm_math_failed_modules": {}}
    tick = progress or (lambda stage, n: None)

    pool = ProcessPoolExecutor(max_workers=workers) if workers > 1 else None
    timings: dict[str, float] = {}

    def run(fn: Callable, tasks: list, stage: str) -> Iterator[Any]:
        t = time.time()
        results = pool.map(fn, tasks) if pool is not None and len(tasks) > 1 else map(fn, tasks)
        for r in results:
            tick(stage, len(r[0]) if isinstance(r, tuple) else len(r))
            yield r
        timings[stage] = round(time.time() - t, 1)

    try:
        _generate(out, S, seed, parts, manifest, run)
        if "nl_docs" in parts:
            t = time.time()
            _generate_nl_docs(out, S, manifest, nl_roots)
            timings["nl_docs"] = round(time.time() - t, 1)
    finally:
        if pool is not None:
            pool.shutdown()
    manifest["stage_seconds"] = timings
    manifest["seconds"] = round(time.time() - t0, 1)
    (out / "builtin.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _generate_nl_docs(out: Path, S: BuiltinSize, manifest: dict[str, Any], roots: list[Path] | None) -> None:
    from .nl_docs import DocQAStats, collect_doc_qa, default_roots, doc_qa_split

    stats = DocQAStats()
    roots = [Path(r) for r in roots] if roots else default_roots()
    train, test = doc_qa_split(collect_doc_qa(roots, stats=stats), S.nl_train, S.nl_test)
    manifest["files"]["train/nl_docs.jsonl"] = _write_jsonl(out / "train/nl_docs.jsonl", train)
    manifest["files"]["heldout/nl_docs_test.jsonl"] = _write_jsonl(out / "heldout/nl_docs_test.jsonl", test)
    manifest["nl_docs"] = {**stats.as_dict(), "roots": [str(r) for r in roots]}


def _generate(out: Path, S: BuiltinSize, seed: int, parts: tuple[str, ...], manifest: dict[str, Any], run: Callable) -> None:
    def flat(results: Iterable[list[dict[str, str]]]) -> Iterator[dict[str, str]]:
        for rows in results:
            yield from rows

    if "arith" in parts:
        tasks = [(_seed(seed, "arith", "train", i), "train", n, S.arith_digits, S.arith_pad) for i, n in enumerate(_chunks(S.arith_train, 50_000))]
        manifest["files"]["train/arith.jsonl"] = _write_jsonl(out / "train/arith.jsonl", flat(run(_arith_chunk, tasks, "arith")))
        manifest["files"]["heldout/arith_test.jsonl"] = _write_jsonl(
            out / "heldout/arith_test.jsonl", _arith_chunk((_seed(seed, "arith", "test"), "test", S.arith_test, S.arith_digits, S.arith_pad))
        )
        manifest["files"]["heldout/arith_long.jsonl"] = _write_jsonl(
            out / "heldout/arith_long.jsonl", _arith_chunk((_seed(seed, "arith", "long"), "long", S.arith_long, S.arith_long_digits, S.arith_pad))
        )
        d = S.arith_digits[1]
        manifest["files"]["heldout/arith_carry.jsonl"] = _write_jsonl(
            out / "heldout/arith_carry.jsonl", _arith_carry_rows(_seed(seed, "arith", "carry", "test"), True, S.arith_carry, d, S.arith_pad)
        )
        manifest["files"]["rl/arith_carry.jsonl"] = _write_jsonl(
            out / "rl/arith_carry.jsonl", _arith_carry_rows(_seed(seed, "arith", "carry", "rl"), False, S.arith_carry_rl, d, S.arith_pad)
        )
    if "sudoku" in parts:
        hard = list(flat(run(_sudoku_chunk, [(10**9 + _seed(seed, "sudoku_hard") % 10**8 + i * CHUNK, "hard", n) for i, n in enumerate(_chunks(S.sudoku_hard, 25))], "sudoku_hard")))
        hard_q = {r["instruction"] for r in hard}
        manifest["files"]["heldout/sudoku_hard.jsonl"] = _write_jsonl(out / "heldout/sudoku_hard.jsonl", hard)
        base = (_seed(seed, "sudoku") % 10**8) * 100
        tasks = [(base + i * 100, "train", n) for i, n in enumerate(_chunks(S.sudoku_train, 100))]
        manifest["files"]["train/sudoku.jsonl"] = _write_jsonl(
            out / "train/sudoku.jsonl", (r for r in flat(run(_sudoku_chunk, tasks, "sudoku")) if r["instruction"] not in hard_q)
        )
    if "dm_math" in parts:
        names = dm_module_names()
        held_q: set[str] = set()
        for regime in ("interpolate", "extrapolate"):
            tasks = [(_seed(seed, "dm", regime, m, i), regime, m, n) for m in names[regime] for i, n in enumerate(_chunks(S.dm_test_per_module, _dm_chunk_size(S.dm_test_per_module)))]
            rows = []
            for (r, err), t in zip(run(_dm_chunk, tasks, f"dm_{regime}"), tasks):
                rows.extend(r)
                if err:
                    manifest["dm_math_failed_modules"][f"{regime}/{t[2]}"] = err
            held_q |= {r["instruction"] for r in rows}
            manifest["files"][f"heldout/dm_math_{regime}.jsonl"] = _write_jsonl(out / f"heldout/dm_math_{regime}.jsonl", rows)
        tasks = [(_seed(seed, "dm", "train", m, i), "train", m, n) for m in names["train"] for i, n in enumerate(_chunks(S.dm_train_per_module, _dm_chunk_size(S.dm_train_per_module)))]
        removed = 0
        # tasks are ordered by module, so each module's file is written once its chunks are in
        results = run(_dm_chunk, tasks, "dm_train")
        current, buf = None, []
        for (rows, err), t in zip(results, tasks):
            if err:
                manifest["dm_math_failed_modules"][f"train/{t[2]}"] = err
            if t[2] != current and current is not None and buf:
                manifest["files"][f"train/dm_math/{current}.jsonl"] = _write_jsonl(out / f"train/dm_math/{current}.jsonl", buf)
                buf = []
            current = t[2]
            for r in rows:
                if r["instruction"] in held_q:
                    removed += 1
                    continue
                buf.append(r)
        if current is not None and buf:
            manifest["files"][f"train/dm_math/{current}.jsonl"] = _write_jsonl(out / f"train/dm_math/{current}.jsonl", buf)
        manifest["dm_math_train_removed_overlap"] = removed
