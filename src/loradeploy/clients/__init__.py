"""One module per external system. Each translates that system's errors into ours."""
