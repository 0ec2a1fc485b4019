#!/usr/bin/env python3
"""Runs the tl_keras rank command; see `python scripts/rank.py --help`."""

from tl_keras import cli

if __name__ == "__main__":
  cli.rank_main()
