"""The worker service: pull a job, run it in a fresh sandbox, publish its events, ack.

A job that fails is a result (`runtime_error`, `time_limit_exceeded`, ...). Only a broken
platform raises: `sandbox.SandboxUnavailableError` stops a worker from starting at all.
"""
