"""``python -m slimfuse`` (and ``torchrun -m slimfuse``) run the CLI."""

from slimfuse.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
