"""Tabular data: checks and public-only preprocessing (``data``), imputation of sensitive columns from
public ones (``impute``), and the tabular runner (``runner``) that scales each view and trains."""
