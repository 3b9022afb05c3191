"""FusionDP: DP training where only some features are sensitive.

Modules: ``privacy`` (Opacus calibration/accounting), ``step`` (the split-loss DP-SGD step),
``modes`` (the nine training modes), ``regularizer``, ``models``, ``data`` (checks, public-only
preprocessing), ``metrics``, ``train`` (loop and result record), ``results`` (JSON lines), ``cli``.
"""

__version__ = "0.1.0"
