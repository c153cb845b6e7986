"""HTTP side of gradlab: FastAPI app, routes, HTTP schemas, problem+json errors and the CLI."""
