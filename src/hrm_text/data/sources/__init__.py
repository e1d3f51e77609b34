"""Raw-source converters for the paper's mixture (`hrm-text data convert SOURCE RAW_PATH --out DIR`).

Each source is a small mapping function from one raw row (the dataset's real columns) to
condition / instruction / response rows, following the reference cleaners (`sapientinc/data_io`,
one script per source) in what they keep, drop and how they tag conditions: `cot` for worked
solutions and reasoning traces, `synth` for model-written data (SYNTH, OpenThoughts2, AceReason,
OpenMathInstruct-2 ...), `noisy` for web/automatic sources, `direct` for bare answers. Streaming,
<think> stripping, validation and drop counting live in `base.py`, shared by all of them.

Output keys follow the published cleaned dataset's layout (see `hrm_text.data.paper`), so
`OUT/data` and `OUT/data_clustered` tokenize into the entry names the paper recipe matches.
"""

from __future__ import annotations

from importlib.resources import files as _pkg_files
from typing import Any, Iterator, Mapping

from .base import ConvertError, ConvertReport, Drop, Out, RowContext, Source, convert, is_proof, last_boxed, safe_name, text

__all__ = ["SOURCES", "Source", "ConvertReport", "ConvertError", "convert", "get_source"]

Row = Mapping[str, Any]
Result = Iterator[Out | Drop]

_REF = "reference cleaner sapientinc/data_io@c62331f"

# ------------------------------------------------------------------------------ general


# FLAN (Open-Orca/FLAN): one folder per subset of Parquet shards; the paper keeps these subsets
_FLAN_DIRECT = (
    "dialog_fsopt_data", "flan_fsopt_data", "flan_fsnoopt_data", "niv2_fsopt_data", "t0_fsopt_data", "t0_fsnoopt_data",
    "dialog_zsopt_data", "flan_zsopt_data", "flan_zsnoopt_data", "niv2_zsopt_data", "t0_zsopt_data", "t0_zsnoopt_data",
)
_FLAN_COT = ("cot_fsopt_data", "cot_zsopt_data")


def _flan(row: Row, ctx: RowContext) -> Result:
    subset = ctx.path.parent.name  # the shard's folder, however deep RAW_PATH points
    if subset in _FLAN_COT:
        cond = "cot"
    elif subset in _FLAN_DIRECT:
        cond = "direct"
    else:
        yield Drop("excluded_subset")
        return
    task = safe_name(str(text(row, "_task_name")))
    yield Out(f"data_clustered/flan/{subset}__{task}", cond, text(row, "inputs"), text(row, "targets"))


def _tasksource_tasks() -> frozenset[str]:
    lines = (_pkg_files(__package__) / "tasksource_tasks.txt").read_text().splitlines()
    return frozenset(s.strip() for s in lines if s.strip() and not s.startswith("#"))


_TASKSOURCE: frozenset[str] = _tasksource_tasks()


def _tasksource(row: Row, ctx: RowContext) -> Result:
    task = text(row, "task")
    if task not in _TASKSOURCE:
        yield Drop("excluded_task")
        return
    yield Out(f"data_clustered/tasksource/{safe_name(task)}", "direct", text(row, "inputs"), text(row, "targets").removesuffix("."))


def _no_robots(row: Row, ctx: RowContext) -> Result:
    msgs = row["messages"]
    start, system = 0, ""
    if msgs and msgs[0]["role"] == "system":
        system, start = msgs[0]["content"] + "\n\n", 1
    if len(msgs) > start + 1 and msgs[start]["role"] == "user" and msgs[start + 1]["role"] == "assistant":
        # the reference tags NoRobots `cot`: human-written, explained answers
        yield Out("data/no_robots", "cot", system + msgs[start]["content"], msgs[start + 1]["content"])
    else:
        yield Drop("not_user_assistant")


# ------------------------------------------------------------------------------ SYNTH

_SYNTH_COT = frozenset({"creative writing", "rag", "memorization", "constrained writing", "editing"})
_SYNTH_DIRECT = frozenset({"math mcq", "mcq"})


def _synth(row: Row, ctx: RowContext) -> Result:
    if row.get("language") != "en":
        yield Drop("not_english")
        return
    if "Pleias self-knowledge" in (row.get("query_seed_url") or ""):
        yield Drop("self_knowledge")
        return
    ex = row.get("exercise")
    if ex == "cooking":
        yield Drop("cooking")
        return
    if ex in _SYNTH_COT:
        cond = "synth,cot"
    elif ex in _SYNTH_DIRECT:
        cond = "synth,direct"
    elif ex == "math exercise":
        cond = "synth,noisy,cot"
    else:
        yield Drop("unknown_exercise")  # the reference would tag it with an empty condition
        return
    inst = text(row, "query") + ((row.get("constraints") or "") if ex == "rag" else "")
    yield Out(f"data_clustered/SYNTH/{ctx.rel.with_suffix('').name}", cond, inst, text(row, "synthetic_answer"))


# ------------------------------------------------------------------------------ reasoning

_OT2_REMOVED = frozenset({"dolphin", "evolcodegolf", "glaive", "magicoder", "sharegpt", "codefeedback", "nvidia_math"})


def _openthoughts2(row: Row, ctx: RowContext) -> Result:
    if row.get("source") in _OT2_REMOVED:
        yield Drop("removed_source")  # code sources, and nvidia_math already in OpenMathInstruct-2
        return
    conv = row["conversations"]
    if len(conv) != 2 or conv[0]["from"] != "user" or conv[1]["from"] != "assistant":
        yield Drop("not_single_turn")
        return
    q, a = conv[0]["value"], conv[1]["value"]
    if "python" in q.lower() or "python" in a.lower() or "```" in a:
        yield Drop("code")
        return
    yield Out("data_clustered/openthoughts2/all", "synth,cot", q, a)


def _acereason(row: Row, ctx: RowContext) -> Result:
    if row.get("category") != "math":
        yield Drop("not_math")
        return
    out = text(row, "output")
    if out.count("<think>") != 1:
        yield Drop("not_one_think")  # the reference asserts exactly one trace per row
        return
    yield Out("data_clustered/acereason/all", "synth,cot", text(row, "input"), out)


def _natural_reasoning(row: Row, ctx: RowContext) -> Result:
    ref = (row.get("reference_answer") or "").strip()
    q = text(row, "question")
    if not ref:
        yield Drop("no_reference_answer")
    elif is_proof(q):
        yield Drop("proof")
    else:
        yield Out("data/natural_reasoning", "noisy,direct", q, ref)


def _principia(row: Row, ctx: RowContext) -> Result:
    yield Out("data/principia_collection", "synth,direct", text(row, "problem_statement"), text(row, "answer"))


def _textbookreasoning(row: Row, ctx: RowContext) -> Result:
    q = text(row, "question")
    yield Out("data_clustered/textbookreasoning/cot", "synth,cot", q, text(row, "answer"))
    if is_proof(q):
        yield Drop("proof")  # only the direct (reference-answer) copy is skipped
    else:
        yield Out("data_clustered/textbookreasoning/direct", "noisy,direct", q, text(row, "reference_answer"))


# ------------------------------------------------------------------------------ math

_OMI2_ORIGINAL = frozenset({"math", "gsm8k"})


def _openmathinstruct2(row: Row, ctx: RowContext) -> Result:
    p = text(row, "problem")
    yield Out("data_clustered/openmathinstruct2/cot", "synth,cot", p, text(row, "generated_solution"))
    if row.get("problem_source") not in _OMI2_ORIGINAL:  # bare answers only for synthetic problems
        yield Out("data_clustered/openmathinstruct2/direct", "synth,direct", p, text(row, "expected_answer"))


def _gsm8k(row: Row, ctx: RowContext) -> Result:
    parts = text(row, "answer").split("#### ")
    if len(parts) != 2:
        yield Drop("no_final_answer")
        return
    yield Out("data/gsm8k_train", "direct", text(row, "question").strip(), parts[1].strip())


def _math(row: Row, ctx: RowContext) -> Result:
    p, sol = text(row, "problem"), text(row, "solution")
    yield Out("data/math_train", "cot", p, sol.strip())
    ans = last_boxed(sol)
    if ans:
        yield Out("data/math_train", "direct", p, ans)
    else:
        yield Drop("no_boxed_answer")  # the cot copy is kept


def _omnimath(row: Row, ctx: RowContext) -> Result:
    p = text(row, "problem")
    yield Out("data/omnimath", "cot", p, text(row, "solution").strip())
    yield Out("data/omnimath", "direct", p, text(row, "answer").strip())


def _webinstruct(row: Row, ctx: RowContext) -> Result:
    yield Out("data/webinstruct_verified", "direct", text(row, "question"), text(row, "answer"))


def _numinamath(row: Row, ctx: RowContext) -> Result:
    if row.get("synthetic"):
        yield Drop("synthetic")
        return
    if row.get("problem_is_valid") != "Yes" or row.get("solution_is_valid") != "Yes":
        yield Drop("not_valid")
        return
    sol, ans = row.get("solution"), row.get("answer")
    if sol is None or ans is None:
        yield Drop("missing_field")
        return
    p = text(row, "problem")
    if "http" in p or "http" in sol or "Translate the text above into English" in sol:
        yield Drop("link_or_translation")
        return
    yield Out("data/numinamath", "noisy,cot", p.strip(), sol.strip())
    if row.get("question_type") != "proof" and ans != "proof":
        yield Out("data/numinamath", "noisy,direct", p.strip(), ans.strip())


# ------------------------------------------------------------------------------ symbolic


def _dmmath(row: Row, ctx: RowContext) -> Result:
    subset = ctx.path.parent.name
    if not subset.startswith("train-"):
        yield Drop("excluded_subset")  # interpolate/extrapolate are evaluation sets
        return
    yield Out(f"data_clustered/dmmath/{safe_name(subset + '__' + ctx.path.stem)}", "direct", text(row, "question"), text(row, "answer"))


def _sudoku(row: Row, ctx: RowContext) -> Result:
    f = row["_fields"]  # source, question, answer, rating (by position, as the reference reads it)
    if len(f) < 3 or len(f[1]) != 81 or len(f[2]) != 81:
        yield Drop("bad_grid")
        return
    yield Out("data_clustered/sudoku_extreme/all", "direct", "Solve this sudoku (0 = empty):\n" + f[1].replace(".", "0"), f[2])


def _amps_khan(row: Row, ctx: RowContext) -> Result:
    yield Out("data/amps_khan", "noisy,cot", text(row, "problem"), "\n".join(row["hints"]).strip())


def _ampsmathematica(row: Row, ctx: RowContext) -> Result:
    # unpacked amps/mathematica/<topic>/<task>/<n>.txt, one "Problem: ... Answer: ..." per file
    parts = ctx.path.parts
    if len(parts) < 3:
        yield Drop("not_topic_task_file")
        return
    topic, task = parts[-3], parts[-2]
    body = text(row, "_text").removeprefix("Problem:")
    if "Answer:" not in body:
        yield Drop("no_answer_tag")
        return
    q, a = body.split("Answer:", 1)
    cond = "noisy,cot" if task.endswith("w_steps") else "noisy,direct"
    yield Out(f"data_clustered/ampsmathematica/{topic}_{task}", cond, q.strip(), a.strip())


# ------------------------------------------------------------------------------ Platypus subsets

# prompt wording here is ours (not the reference cleaners'), so converted Platypus/Sudoku rows are
# not byte-identical to the published files; columns, filters and condition tags are the reference's
_ARB = {"math": ("Math problem:", "cot"), "reading": ("Reading comprehension:", "cot"),
        "law": ("Answer with the letter of the correct option.", "direct"), "science": ("Science problem:", "cot"),
        "physics": ("Physics problem:", "cot")}


def _letters(choices: list[str]) -> str:
    return "\n".join(f"{chr(65 + i)}: {c}" for i, c in enumerate(choices))


def _arb(row: Row, ctx: RowContext) -> Result:
    kind = ctx.rel.stem  # math.json, law.json, ...
    if kind not in _ARB:
        yield Drop("unknown_arb_file")
        return
    desc, cond = _ARB[kind]
    yield Out(f"data/Platypus/arb_{kind}", cond, f"{desc}\n\n{text(row, 'instruction')}", text(row, "response"))


def _openbookqa(row: Row, ctx: RowContext) -> Result:
    opts = _letters(list(row["choices"]["text"]))
    inst = f"{text(row, 'question_stem')}\n{opts}\n\nKnown fact: {text(row, 'fact1')}\nWhich option is right?"
    yield Out("data/Platypus/openbookqa", "direct", inst, text(row, "answerKey"))


def _reclor(row: Row, ctx: RowContext) -> Result:
    inst = f"{text(row, 'context')}\n\n{text(row, 'question')}\n{_letters(list(row['answers']))}"
    yield Out("data/Platypus/reclor", "direct", inst, chr(65 + int(row["label"])))


def _scibench(row: Row, ctx: RowContext) -> Result:
    p = (row.get("problem_text") or "").strip()
    sol = (row.get("solution") or "").strip()
    latex, number = (row.get("answer_latex") or "").strip(), str(row.get("answer_number") or "").strip()
    if latex == f"${number}$":
        latex = number
    if sol:
        yield Out("data/Platypus/scibench", "cot", p, sol)
    yield Out("data/Platypus/scibench", "direct", p, latex)


def _scienceqa(row: Row, ctx: RowContext) -> Result:
    q, lecture, sol = text(row, "question").strip(), (row.get("lecture") or "").strip(), (row.get("solution") or "").strip()
    opts = "\n".join(f"{chr(65 + i)}: {c.strip()}" for i, c in enumerate(row["choices"]))
    letter = chr(65 + int(row["answer"]))
    inst = f"{q}\n{opts}" + (f"\n\nBackground: {lecture}" if lecture else "")
    if sol:
        yield Out("data/Platypus/scienceqa", "cot", inst, f"{sol}\n\nAnswer: {letter}")
    yield Out("data/Platypus/scienceqa", "direct", inst, letter)


def _theoremqa(row: Row, ctx: RowContext) -> Result:
    if row.get("Picture") is not None:
        yield Drop("has_picture")
        return
    yield Out("data/Platypus/theoremqa", "direct", text(row, "Question"), str(row["Answer"]))


SOURCES: dict[str, Source] = {
    s.name: s
    for s in (
        Source("flan", "Open-Orca/FLAN (folders <subset>/*.parquet)", _flan, ("inputs", "targets", "_task_name"), verified=_REF),
        Source("tasksource", "tasksource/tasksource-instruct-v0", _tasksource, ("inputs", "targets", "task"), verified=_REF),
        Source("no_robots", "HuggingFaceH4/no_robots (all splits)", _no_robots, ("messages",), verified=_REF),
        Source("synth", "PleIAs/SYNTH", _synth, ("language", "query_seed_url", "exercise", "query", "constraints", "synthetic_answer"),
               verified=_REF + "; card of PleIAs/SYNTH derivatives (query, synthetic_answer, language, exercise)"),
        Source("openthoughts2", "open-thoughts/OpenThoughts2-1M", _openthoughts2, ("conversations", "source"), think=True, verified=_REF),
        Source("acereason", "nvidia/AceReason-1.1-SFT", _acereason, ("category", "input", "output"), think=True,
               verified=_REF + "; dataset_info of an AceReason-1.1 derivative card (category, source, input, output)"),
        Source("natural_reasoning", "facebook/natural_reasoning", _natural_reasoning, ("question", "reference_answer"), verified=_REF),
        Source("principia", "facebook/principia-collection (all splits)", _principia, ("problem_statement", "answer"), verified=_REF),
        Source("textbookreasoning", "MegaScience/TextbookReasoning", _textbookreasoning, ("question", "answer", "reference_answer"), verified=_REF),
        Source("openmathinstruct2", "nvidia/OpenMathInstruct-2", _openmathinstruct2,
               ("problem", "generated_solution", "expected_answer", "problem_source"), verified=_REF),
        Source("gsm8k", "openai/gsm8k (main, train)", _gsm8k, ("question", "answer"), verified=_REF + "; eval/tasks/gsm8k.py reads the same columns"),
        Source("math", "EleutherAI/hendrycks_math (7 subjects, train)", _math, ("problem", "solution"), verified=_REF),
        Source("omnimath", "KbsdJames/Omni-MATH (test)", _omnimath, ("problem", "solution", "answer"), verified=_REF),
        Source("webinstruct_verified", "TIGER-Lab/WebInstruct-verified", _webinstruct, ("question", "answer"), verified=_REF),
        Source("numinamath", "AI-MO/NuminaMath-1.5", _numinamath,
               ("problem", "solution", "answer", "synthetic", "problem_is_valid", "solution_is_valid", "question_type"), verified=_REF),
        Source("dmmath", "mathematics_dataset-v1.0.tar.gz, unpacked (train-*/<module>.txt)", _dmmath, None, suffixes=(".txt",), verified=_REF),
        Source("amps_khan", "amps.tar.gz unpacked: amps/khan/**/*.json (problem, hints)", _amps_khan, None, suffixes=(".json",), verified=_REF),
        Source("ampsmathematica", "amps.tar.gz unpacked: amps/mathematica/<topic>/<task>/*.txt", _ampsmathematica, None,
               suffixes=(".txt",), whole_file=True, verified=_REF),
        Source("platypus_arb", "imone/ARB (math/reading/law/science/physics.json)", _arb, None, suffixes=(".json",), verified=_REF),
        Source("platypus_openbookqa", "openbookqa (additional; train+validation)", _openbookqa, ("question_stem", "choices", "answerKey", "fact1"),
               verified=_REF),
        Source("platypus_reclor", "metaeval/reclor (train+validation)", _reclor, ("context", "question", "answers", "label"), verified=_REF),
        Source("platypus_scibench", "mandyyyyii/scibench dataset/original/*.json", _scibench, None, suffixes=(".json",), verified=_REF),
        Source("platypus_scienceqa", "metaeval/ScienceQA_text_only (train+validation+test)", _scienceqa,
               ("question", "choices", "lecture", "solution", "answer"), verified=_REF),
        Source("platypus_theoremqa", "TIGER-Lab/TheoremQA (test)", _theoremqa, ("Question", "Answer", "Picture"), verified=_REF),
        Source("sudoku_extreme", "sapientinc/sudoku-extreme train.csv (source,question,answer,rating)", _sudoku, None, suffixes=(".csv",),
               verified=_REF),
    )
}


def get_source(name: str) -> Source:
    try:
        return SOURCES[name]
    except KeyError:
        raise ConvertError(f"unknown source {name!r}; known: {', '.join(sorted(SOURCES))}") from None
