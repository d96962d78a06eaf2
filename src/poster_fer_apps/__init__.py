"""The apps on top of the :mod:`poster_fer` library: the ``poster-fer`` command line (:mod:`.cli`), its
subcommands (:mod:`.commands`) and the HTTP server with its web page (:mod:`.serve`).

Kept in a package of its own, as ``poster_fer_train`` keeps training, so the library (models, weights, data,
faces, evaluation, inference, export) can be read, installed and tested without them and never imports them
(tests/test_architecture.py). Commands are found through the ``poster_fer.commands`` entry-point group.
"""
