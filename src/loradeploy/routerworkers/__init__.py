"""Code that runs inside the router's own virtualenv (the LiteLLM proxy).

It imports nothing from loradeploy; the local stack copies each file next to the
proxy's configuration, where the proxy loads it by file name.
"""
