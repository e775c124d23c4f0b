"""What every problem document (RFC 9457) of the service shares, importable without the web
framework: the HTTP protocol (service/server.py) answers 408 and 431 with it before any of the
app is imported in a worker."""

PROBLEM_TYPE_BASE = "https://algoways.dev/problems/"
PROBLEM_CONTENT_TYPE = "application/problem+json"
