"""Pure decisions and value types. Nothing here talks to a server."""
