#!/usr/bin/env python3
"""Runs the tl_keras pipeline command; see `python scripts/pipeline.py --help`."""

from tl_keras import cli

if __name__ == "__main__":
  cli.pipeline_main()
