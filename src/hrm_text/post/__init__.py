"""Post-training on top of a trained model: GRPO (`hrm-text rl`).

Floor: beside `eval`, above `train` and `infer`. GRPO alternates the inference engine's rollouts
with the trainer's optimizer, checkpoints and metrics, so it needs both floors, which must not
import each other; it also scores with `eval.scoring`.
"""
