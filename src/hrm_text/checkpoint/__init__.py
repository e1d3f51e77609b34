"""Checkpoints, one floor above the model and below training and inference
(docs/ARCHITECTURE.md#floor-plan): `store` saves and loads training state (DCP shards, manifest,
COMPLETE marker, resume and verification); `loading` resolves a run folder, checkpoint or
transformers folder and returns the model with its tokenizer for every command that reads one."""
