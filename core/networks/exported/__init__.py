"""``torch.export`` archives (.pt2) read by our own checked reader: no pickle, no code from the archive.

``archive`` checks the zip and its JSON and describes the weights, ``program`` is the graph as data, ``ops`` the
operators a graph may call, ``guards`` the shape relations read from guards_code without running it, and
``describe``, ``chain`` and ``footprint`` answer questions about a graph and ``roles`` what each kind asks of one: all
without torch, for the API. ``graph`` builds the ``nn.Module`` that runs it and ``dense`` a chain's Linear form
(torch; worker and inspector processes only).
"""
