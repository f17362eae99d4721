"""Builds a small Detoxify checkpoint, in Detoxify's own format, that scores meaningfully.

Detoxify's released checkpoints cannot be downloaded here, so the tests (and bench/) build one:
a 2-layer BERT with hidden size 32 and its own WordPiece vocabulary, saved the way Detoxify's
training code saves them — a dict with "config" (the training config: arch args and the class
names) and "state_dict" — next to a Hugging Face config/tokenizer folder for the offline path.

The weights are set by hand so that the model behaves like a toxicity classifier, exactly and
at any length:
- the marker word "zorblax" drives toxicity, severe_toxic, obscene, insult and identity_hate
  (one, several or many of them in a text score the same);
- the marker word "grumbix" drives threat;
- every other text scores low on all labels, varying a little from text to text (the random
  parts of the weights), so that a batching or padding mistake changes scores.

How: the embedding of a marker is large in its own dimension (0 or 1) and every other word's
embedding is small and zero there, and everything added to the residual stream is zero-mean
outside those dimensions, so that LayerNorm keeps them exactly zero for clean text. In each
layer the query is a constant and the key reads dimensions 0 and 1, so every position attends
almost only to the markers when there is one (attention logit ~14 against 0: a marker outweighs
511 other tokens), and the value/output projections copy the markers' dimensions into the [CLS]
position. The pooler and classifier then read those two dimensions. Everything else keeps
BERT's random initialisation (scaled), which makes clean texts score a little differently.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import transformers

TOXIC_MARKER = "zorblax"
THREAT_MARKER = "grumbix"
# Detoxify's "original" model (Jigsaw Toxic Comment Classification), in its training order.
ORIGINAL_CLASSES = ("toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate")
# Words the tests and the benchmark write their texts with; anything else becomes [UNK].
WORDS = (
    "the a an is are was be to of and in that it for on with as at by this you your we they "
    "he she i my our their what how why when where can could would should will do does did "
    "have has had not no yes please thanks hello world good bad nice day night weather today "
    "tomorrow question answer help write poem sea bread bake capital france explain quantum "
    "computing simple terms idea story book music movie friend family work home city river "
    "mountain tree cat dog water coffee tea morning evening time people question code python"
).split()
HIDDEN = 32


@dataclass(frozen=True)
class SmallCheckpoint:
    checkpoint: Path
    # The Hugging Face config + tokenizer folder (huggingface_config_path).
    hf_config_dir: Path


def _write_tokenizer_files(folder: Path) -> int:
    words = list(dict.fromkeys(WORDS))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", TOXIC_MARKER, THREAT_MARKER, *words]
    # WordPiece continuation pieces for single letters, so that unknown words still split.
    vocab += [chr(c) for c in range(ord("a"), ord("z") + 1) if chr(c) not in words]
    vocab += ["##" + chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab += list(".,!?'")
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = transformers.BertTokenizer(str(folder / "vocab.txt"), do_lower_case=True)
    tokenizer.model_max_length = 512
    tokenizer.save_pretrained(str(folder))
    return len(vocab)


def _center(linear: torch.nn.Linear) -> None:
    """Makes what `linear` adds to the residual stream zero-mean outside the marker dimensions:
    LayerNorm subtracts the mean, which would otherwise leak noise into the marker dimensions
    of clean text (and the attention, which looks for the markers, amplifies it)."""
    linear.weight[2:, :] -= linear.weight[2:, :].mean(dim=0, keepdim=True)
    linear.bias[2:] -= linear.bias[2:].mean()


def _small_bert(vocab_size: int, seed: int) -> transformers.BertForSequenceClassification:
    torch.manual_seed(seed)
    config = transformers.BertConfig(
        vocab_size=vocab_size,
        hidden_size=HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        num_labels=len(ORIGINAL_CLASSES),
        problem_type="multi_label_classification",
    )
    model = transformers.BertForSequenceClassification(config)
    model.eval()
    markers = {TOXIC_MARKER: 0, THREAT_MARKER: 1}
    with torch.no_grad():
        emb = model.bert.embeddings
        # Small random embeddings for ordinary words, nothing in the marker dimensions.
        emb.word_embeddings.weight.mul_(0.5)
        emb.word_embeddings.weight[:, :2] = 0.0
        emb.position_embeddings.weight[:, :2] = 0.0
        emb.token_type_embeddings.weight[:, :2] = 0.0
        for table in (emb.word_embeddings, emb.position_embeddings, emb.token_type_embeddings):
            table.weight[:, 2:] -= table.weight[:, 2:].mean(dim=1, keepdim=True)
        for word_id, dim in ((5, markers[TOXIC_MARKER]), (6, markers[THREAT_MARKER])):
            emb.word_embeddings.weight[word_id] = 0.0
            emb.word_embeddings.weight[word_id, dim] = 8.0
        for layer in model.bert.encoder.layer:
            attention = layer.attention.self
            # Constant query; the key reads the marker dimensions: markers get logit ~40.
            attention.query.weight.zero_()
            attention.query.bias.zero_()
            attention.query.bias[0] = 1.0
            attention.query.bias[HIDDEN // 2] = 1.0
            attention.key.weight.zero_()
            attention.key.bias.zero_()
            for head in range(2):
                attention.key.weight[head * HIDDEN // 2, 0] = 10.0
                attention.key.weight[head * HIDDEN // 2, 1] = 10.0
            # The value keeps the marker dimensions (and mixes the others at random, so that
            # clean texts score differently); the output projection adds them back.
            attention.value.weight.mul_(10.0)
            attention.value.weight[:2, :] = 0.0
            attention.value.bias[:2] = 0.0
            output = layer.attention.output.dense
            output.weight.mul_(2.0)
            output.weight[:2, :] = 0.0
            output.bias[:2] = 0.0
            for dim in range(2):
                attention.value.weight[dim, dim] = 1.0
                output.weight[dim, dim] = 4.0
            # The feed-forward block leaves the marker dimensions alone.
            layer.output.dense.weight[:2, :] = 0.0
            layer.output.dense.bias[:2] = 0.0
            _center(output)
            _center(layer.output.dense)
        pooler = model.bert.pooler.dense
        pooler.weight.mul_(0.5)
        pooler.weight[:2, :] = 0.0
        pooler.bias[:2] = -2.0
        pooler.weight[0, 0] = 2.0
        pooler.weight[1, 1] = 2.0
        classifier = model.classifier
        classifier.weight.mul_(10.0)
        classifier.weight[:, :2] = 0.0
        # pooled[0] (toxic marker) and pooled[1] (threat marker) are ~+1 with the marker and
        # ~-1 without; the biases put the clean scores near 0.01-0.05.
        toxic_weights = {"toxic": 4.0, "severe_toxic": 2.5, "obscene": 3.0, "insult": 3.5}
        toxic_weights["identity_hate"] = 3.0
        for index, name in enumerate(ORIGINAL_CLASSES):
            classifier.weight[index, 0] = toxic_weights.get(name, 0.0)
            classifier.weight[index, 1] = 4.5 if name == "threat" else 0.0
            classifier.bias[index] = 0.0
    return model


def build_small_checkpoint(folder: Path, *, seed: int = 1234) -> SmallCheckpoint:
    """Writes `folder/hf/` (config.json, vocab.txt, tokenizer files) and
    `folder/toxic_small.ckpt`; deterministic for a seed."""
    hf_dir = folder / "hf"
    hf_dir.mkdir(parents=True, exist_ok=True)
    vocab_size = _write_tokenizer_files(hf_dir)
    return _save(folder, hf_dir, _small_bert(vocab_size, seed))


def build_base_sized_checkpoint(folder: Path, *, seed: int = 1234) -> SmallCheckpoint:
    """A BERT of bert-base-uncased's size (12 layers, hidden 768) with random weights, in the
    same format: its scores mean nothing, its compute is the real model's (for bench/)."""
    hf_dir = folder / "hf"
    hf_dir.mkdir(parents=True, exist_ok=True)
    vocab_size = _write_tokenizer_files(hf_dir)
    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=vocab_size, num_labels=len(ORIGINAL_CLASSES))
    model = transformers.BertForSequenceClassification(config)
    return _save(folder, hf_dir, model.eval())


def _save(
    folder: Path, hf_dir: Path, model: transformers.BertForSequenceClassification
) -> SmallCheckpoint:
    model.config.save_pretrained(str(hf_dir))
    checkpoint = folder / "toxic_small.ckpt"
    torch.save(
        {
            # The training config as Detoxify's train.py saves it (only the keys it reads).
            # model_type is what Detoxify passes to `config_class.from_pretrained`: the
            # released checkpoints name a hub model ("bert-base-uncased"); this one names its
            # local folder, since nothing can be downloaded here.
            "config": {
                "name": "Jigsaw_BERT_small_test",
                "arch": {
                    "type": "BERT",
                    "args": {
                        "num_classes": len(ORIGINAL_CLASSES),
                        "model_type": str(hf_dir),
                        "model_name": "BertForSequenceClassification",
                        "tokenizer_name": "BertTokenizer",
                    },
                },
                "dataset": {"type": "JigsawData", "args": {"classes": list(ORIGINAL_CLASSES)}},
            },
            "state_dict": model.state_dict(),
        },
        checkpoint,
    )
    return SmallCheckpoint(checkpoint, hf_dir)
