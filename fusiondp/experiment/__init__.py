"""Running experiments: settings, the training loop, records, metrics, launchers, benchmarks.

``config`` (a run's typed settings, the one owner of them), ``cli`` (the shared flags), ``loop``
(Poisson private batches, exactly T steps, evaluation), ``run`` (a run from its settings: the privacy
spec, the step's configuration, the loop, the record), ``records`` (building a record),
``results`` (storing and finding records), ``metrics``, ``launch`` (sweep launchers), ``benchmark``.
Imports the mechanism and the models, never the data layers above it.
"""
