"""One module per benchmark of the evaluation suites.

`gsm8k`, `math`, `drop`, `mmlu`, `arc`, `hellaswag`, `winogrande`, `boolq` (the paper's eight,
with the paper's protocol) and `builtin` (held-out exact match on the built-in corpus). Shared
pieces: `base` (items, specs, the task record), `files` (reading the published data files),
`multiple_choice` (prompt shape and scorer of the five multiple-choice tasks). `registry` holds
every task by name; `hrm_text.eval.runner` turns them into prompts, runs a generator and scores.
"""
