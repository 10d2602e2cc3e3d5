"""The `crucible` command, the local stack it runs, and the Python client (`crucible.client`)."""
