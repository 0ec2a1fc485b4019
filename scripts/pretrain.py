#!/usr/bin/env python3
"""Runs the tl_keras pretrain command; see `python scripts/pretrain.py --help`."""

from tl_keras import cli

if __name__ == "__main__":
  cli.pretrain_main()
