"""Everything about the package is in pyproject.toml; this file only adds one start-up file.

`hrm_text_lm_eval.pth` goes into site-packages so that every interpreter start imports
`_hrm_text_lm_eval_hook` (src/_hrm_text_lm_eval_hook.py), which registers our backend with
lm-eval's model registry when lm-eval loads, making a bare `lm_eval --model hrm_text ...` work
(lm-eval 0.4.x has no plugin entry points). Files at the root of a wheel land in site-packages, so:

  - normal wheel (`pip install .`, `python -m build`): `build_py` writes the .pth into build_lib,
    whose whole tree becomes the wheel's root;
  - editable wheel (`pip install -e .`, PEP 660): setuptools builds it from an "editable strategy"
    (a .pth pointing at src/, or a finder/link tree) and drops build_lib, so the .pth is added to
    the wheel next to the strategy's own files. This hooks `editable_wheel._select_strategy`, a
    setuptools internal (unchanged since setuptools 64); if it ever goes away the editable install
    silently lacks the .pth and tests/integration/test_eval_lm_eval.py::test_bare_lm_eval_cli_finds_hrm_text fails.

Both ways the file is listed in the wheel's RECORD, so `pip uninstall hrm-text` removes it.
"""

import os

from setuptools import setup
from setuptools.command.build_py import build_py as _build_py
from setuptools.command.editable_wheel import editable_wheel as _editable_wheel

PTH_NAME = "hrm_text_lm_eval.pth"
# One line; site.py executes lines that start with "import". The try keeps a stale install (hook
# module gone, e.g. an editable checkout that was moved) from printing an error at every start.
PTH_TEXT = 'import sys; exec("try:\\n import _hrm_text_lm_eval_hook\\nexcept Exception:\\n pass")\n'


class build_py(_build_py):
    def run(self) -> None:
        super().run()
        if not self.editable_mode:
            path = os.path.join(self.build_lib, PTH_NAME)
            with open(path, "w", encoding="utf-8") as f:
                f.write(PTH_TEXT)

    def get_outputs(self, *args, **kwargs):
        outputs = list(super().get_outputs(*args, **kwargs))
        if not self.editable_mode:
            outputs.append(os.path.join(self.build_lib, PTH_NAME))
        return outputs


class _StrategyWithPth:
    """An editable strategy that also writes our .pth into the editable wheel."""

    def __init__(self, strategy) -> None:
        self.strategy = strategy

    def __call__(self, wheel, files, mapping) -> None:
        self.strategy(wheel, files, mapping)
        wheel.writestr(PTH_NAME, PTH_TEXT.encode("utf-8"))

    def __enter__(self):
        self.strategy.__enter__()
        return self

    def __exit__(self, *exc):
        return self.strategy.__exit__(*exc)


class editable_wheel(_editable_wheel):
    def _select_strategy(self, *args, **kwargs):
        return _StrategyWithPth(super()._select_strategy(*args, **kwargs))


setup(cmdclass={"build_py": build_py, "editable_wheel": editable_wheel})
