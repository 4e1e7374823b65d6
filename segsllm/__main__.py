"""``python -m segsllm`` runs the CLI."""

from segsllm.cli.app import main

if __name__ == "__main__":
    main()
