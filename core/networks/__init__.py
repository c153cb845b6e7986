"""Networks: a model as a job parameter (the spec, pydantic, no torch), its build for workers (torch), and the
stored models: sent in one request (``service``) or uploaded resumably (``uploads``), checked before their row is
made (``intake``: ``strict_json``, ``safetensors_header``, ``checkpoint``, ``exported``), kept by ``repository``.

``spec``, ``checks``, ``budget``, ``safetensors_header``, ``strict_json``, ``checkpoint``, ``inspector``,
``intake``, ``stored``, ``repository``, ``service``, ``uploads`` and ``exported`` (but its ``graph`` and ``dense``)
import no torch and no transformers: the API validates, checks, budgets and stores models with them. ``build``,
``architectures`` (which native transformers class a config builds, and its sizes), ``builtin``, ``weights``,
``resolve``, ``meta_summary``, ``analysis``, ``exported.graph`` and ``exported.dense`` are the torch side, imported
by workers, run modules and the inspector's child process.
"""
