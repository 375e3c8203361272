"""`python -m proxy ...` is the same as the `vllm-switch` command."""

from proxy.cli import main

raise SystemExit(main())
