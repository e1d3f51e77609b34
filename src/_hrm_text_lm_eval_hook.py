"""Start-up hook that lets a bare `lm_eval --model hrm_text ...` find our lm-eval backend.

Installed next to `hrm_text_lm_eval.pth` (written by setup.py into site-packages for normal and
editable installs alike), whose one line imports this module at every interpreter start, the way
setuptools' `distutils-precedence.pth` works. lm-eval 0.4.x has no plugin entry points: its model
names come only from its own registry, whose built-in entries are lazy "module:attr" strings added
when `lm_eval.models` is imported. This module puts one meta-path finder in front of the import
system that waits for exactly that import; once `lm_eval.models` has executed, it adds

    model_registry.register("hrm_text", target="hrm_text.eval.lm_eval_adapter:HRMTextLMEval")

and takes itself out of `sys.meta_path`. So `hrm_text` becomes visible at the same moment as
lm-eval's own `hf`, `vllm`, ... names, and like theirs it is only a string until used: neither torch
nor `hrm_text` is imported until lm-eval materialises the backend, at which point the
`@register_model("hrm_text")` decorator replaces the placeholder (lm-eval accepts that because the
string equals "<class module>:<class name>").

Why `lm_eval.models` and not `lm_eval.api.registry`: `get_model` imports `lm_eval.models` only when
it finds the registry empty; an entry added as soon as the registry module exists would make it
non-empty and hide every stock backend from `lm_eval --model hf`.

Costs and safety: only `sys` and `os` (both loaded before any .pth file runs), so start-up imports
nothing new; until `lm_eval.models` is imported the finder costs one string comparison per new
import. Every failure of ours is swallowed (the import then proceeds exactly as without the hook);
lm-eval's own import errors propagate unchanged. Set HRM_TEXT_NO_LM_EVAL_HOOK=1 to switch it off.
"""

import sys

TRIGGER = "lm_eval.models"
MODEL_NAME = "hrm_text"
TARGET = "hrm_text.eval.lm_eval_adapter:HRMTextLMEval"


def register() -> None:
    """Add the lazy `hrm_text` entry to lm-eval's model registry, unless something is there already
    (the adapter module itself may have been imported first and registered the class)."""
    try:
        from lm_eval.api.registry import model_registry

        if MODEL_NAME not in model_registry:
            model_registry.register(MODEL_NAME, target=TARGET)
    except Exception:  # never let our hook break lm-eval (or anything else)
        pass


class _Loader:
    """The real loader of `lm_eval.models`, plus `register()` once its module has executed. Put back
    into the module's `__loader__`/`__spec__` afterwards, so nothing of ours stays behind."""

    def __init__(self, loader) -> None:
        self.loader = loader

    def create_module(self, spec):
        create = getattr(self.loader, "create_module", None)
        return create(spec) if create is not None else None

    def exec_module(self, module) -> None:
        uninstall()  # outside the import system's loop over sys.meta_path by now
        try:
            self.loader.exec_module(module)
        finally:
            try:
                if getattr(module, "__loader__", None) is self:
                    module.__loader__ = self.loader
                if getattr(module.__spec__, "loader", None) is self:
                    module.__spec__.loader = self.loader
            except Exception:
                pass
        register()

    def __getattr__(self, name: str):  # get_source, is_package, get_resource_reader, ...
        return getattr(self.loader, name)


class _Finder:
    """One-shot meta-path finder: for `lm_eval.models` it asks the finders behind it for the spec
    and wraps its loader; every other name is declined at once. It does not take itself out of
    `sys.meta_path` here (the import system is iterating that list); the loader does."""

    fired = False

    @classmethod
    def find_spec(cls, fullname, path=None, target=None):
        if fullname != TRIGGER or cls.fired:
            return None
        cls.fired = True
        try:
            for finder in list(sys.meta_path):
                if finder is cls:
                    continue
                find = getattr(finder, "find_spec", None)
                if find is None:
                    continue
                spec = find(fullname, path, target)
                if spec is not None:
                    if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                        spec.loader = _Loader(spec.loader)
                    return spec
        except Exception:
            pass
        return None  # not found, or our lookup failed: the import system goes on as without us


def uninstall() -> None:
    try:
        while _Finder in sys.meta_path:
            sys.meta_path.remove(_Finder)
    except Exception:
        pass


def install() -> None:
    try:
        import os

        if os.environ.get("HRM_TEXT_NO_LM_EVAL_HOOK"):
            return
        if TRIGGER in sys.modules:  # imported already (hook loaded late): register right away
            register()
        elif _Finder not in sys.meta_path:
            sys.meta_path.insert(0, _Finder)
    except Exception:
        pass


install()
