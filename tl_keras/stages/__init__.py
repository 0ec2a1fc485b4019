"""The stages, each a `run(config, ...)`: load data, build and train models, write artifacts."""
