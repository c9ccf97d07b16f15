"""Scripts that run inside the ML virtualenv (torch, transformers, peft).

They import nothing from loradeploy and are started as subprocesses by path.
"""
