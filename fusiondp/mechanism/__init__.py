"""The privacy mechanism: what a reviewer of the guarantee reads.

``accounting`` (σ from (ε, δ, q, T) and ε spent, under each neighbouring relation), ``modes`` (the
ten modes as data: views, private loss, relation), ``clipping`` (per-example clipped sums by
book-keeping), ``step`` (the split-loss DP-SGD step), ``regularizer`` (the representation-consistency
term and its clip C_h), ``optim`` (the update rule: SGD, momentum or Adam on the already-noised
update, and the lr schedule) and ``scaling`` (where the original view's scale comes from, including its
DP estimate). It imports only :mod:`fusiondp.models`; nothing here reads files or run settings.
"""
