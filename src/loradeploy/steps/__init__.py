"""The steps of the specification. Each receives its clients as arguments and returns a
``StepResult``; none reads the environment or global settings."""
