"""The pieces of the secmx load benchmark (see bench/README.md)."""
