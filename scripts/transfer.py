#!/usr/bin/env python3
"""Runs the tl_keras transfer command; see `python scripts/transfer.py --help`."""

from tl_keras import cli

if __name__ == "__main__":
  cli.transfer_main()
