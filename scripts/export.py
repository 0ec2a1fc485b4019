#!/usr/bin/env python3
"""Runs the tl_keras export command; see `python scripts/export.py --help`."""

from tl_keras import cli

if __name__ == "__main__":
  cli.export_main()
