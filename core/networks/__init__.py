"""A network as a job parameter: the spec (pydantic, no torch) and, for workers only, its build (torch).

``spec``, ``families``, ``checks``, ``budget``, ``safetensors_header`` and ``inspector`` import no torch and no
transformers: the API validates, checks and budgets models with them. ``build``, ``builtin``, ``inspect`` and
``analysis`` are the torch side, imported by workers, run modules and the inspector subprocess.
"""
