"""FusionDP: DP training where only some features are sensitive.

Layers, each importing only those before it (tests/test_layers.py keeps this true):

1. ``models``: architectures returning ``(logits, representation)``.
2. ``mechanism``: accounting, modes, per-example clipping, the split-loss step, the regularizer,
   scaling of the original view: the privacy guarantee lives here.
3. ``experiment``: settings, the training loop, records and results, metrics, launchers.
4. ``tabular`` and then ``text``: data checks, imputation, the runners of each kind of data.
5. ``datasets``: one module of facts per dataset; then ``audit``: empirical privacy audits.
"""

__version__ = "0.1.0"
