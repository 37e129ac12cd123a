"""The Hydra application's own parts: run folders, resume and baseline loading, error reporting.

``lightning_afm.cli`` is the entry point; these modules keep it short. Nothing here is needed
to use the models, the data or the callback from Python.
"""
