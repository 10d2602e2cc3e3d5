"""The `crucible` command and the local stack it runs."""
