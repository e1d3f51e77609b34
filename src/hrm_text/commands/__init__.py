"""The top floor: every `hrm-text` sub-command, one module per area (see hrm_text/cli.py)."""
