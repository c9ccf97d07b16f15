"""The local stack: real MLflow and vLLM servers on loopback, started by the project."""
