#!/usr/bin/env python3
"""Runs the tl_keras fuse command; see `python scripts/fuse.py --help`."""

from tl_keras import cli

if __name__ == "__main__":
  cli.fuse_main()
