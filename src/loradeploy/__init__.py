"""loradeploy: LoRA adapters from the MLflow Model Registry to running vLLM servers.

Layers, from the outside in (enforced by import-linter, see CONTRIBUTING.md):

    cli            parse flags, build settings once, call one step, render, map errors
    steps          the actions of the specification; receive their clients as arguments
    clients        one module per external system; translate its errors into ours
    domain         pure decisions and value types; no I/O beyond reading adapter files
    errors         the error hierarchy and the exit-code contract
"""

__version__ = "0.1.0"
