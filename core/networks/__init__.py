"""Networks: a model as a job parameter (the spec, pydantic, no torch), its build for workers (torch), and the
uploaded models (``repository``, ``service``).

``spec``, ``families``, ``checks``, ``budget``, ``safetensors_header``, ``inspector``, ``repository`` and ``service``
import no torch and no transformers: the API validates, checks, budgets and stores models with them. ``build``,
``builtin``, ``meta_summary`` and ``analysis`` are the torch side, imported by workers, run modules and the
inspector's child process.
"""
