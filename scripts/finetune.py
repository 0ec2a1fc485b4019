#!/usr/bin/env python3
"""Runs the tl_keras finetune command; see `python scripts/finetune.py --help`."""

from tl_keras import cli

if __name__ == "__main__":
  cli.finetune_main()
