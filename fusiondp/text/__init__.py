"""Clinical notes: sensitive spans (``spans``), their rewrite by a language model from public context
(``infill``), notes as training data and the CAML model (``data``), and a frozen encoder with a small
head (``encoder``)."""
