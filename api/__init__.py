"""The HTTP entry point: routes, request parsing, auth and error mapping only."""
