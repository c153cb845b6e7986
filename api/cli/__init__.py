"""The ``gradlab`` command line: the service's processes (``main``) and the HTTP client's commands."""
