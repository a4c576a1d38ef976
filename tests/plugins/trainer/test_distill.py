"""Distillation: the triple loss term by term, masking, students from teachers, both kinds of run."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, DistilBertForMaskedLM

from nlpkit.errors import NlpkitError
from nlpkit.tasks.base import EncodedExample
from nlpkit.testing import DISTILBERT_HEADS, save_tiny_distilbert, tiny_vocab
from nlpkit_plugins.trainer.distill import DistillConfig, distill
from nlpkit_plugins.trainer.losses import TripleLossWeights, task_soft_target_loss, triple_loss
from nlpkit_plugins.trainer.masking import IGNORE_INDEX, Masker, token_counts
from nlpkit_plugins.trainer.students import check_compatible, student_from_teacher

WORDS = "the film was good bad great awful long short funny dull moving plot actor story scene".split()


def batch_outputs(seed: int = 0, length: int = 7, vocab: int = 50, dim: int = 8):
    generator = torch.Generator().manual_seed(seed)
    student_logits = torch.randn(2, length, vocab, generator=generator, requires_grad=True)
    student_hidden = torch.randn(2, length, dim, generator=generator, requires_grad=True)
    teacher_logits = torch.randn(2, length, vocab, generator=generator)
    teacher_hidden = torch.randn(2, length, dim, generator=generator)
    attention = torch.ones(2, length, dtype=torch.long)
    attention[1, 5:] = 0
    labels = torch.full((2, length), IGNORE_INDEX)
    labels[0, 2], labels[1, 1] = 7, 9
    return student_logits, student_hidden, teacher_logits, teacher_hidden, labels, attention


def test_each_term_responds_to_its_weight_and_only_to_it():
    outputs = batch_outputs()
    base, parts = triple_loss(*outputs, TripleLossWeights(1.0, 1.0, 1.0, 2.0))
    assert set(parts) == {"ce", "mlm", "cos"} and all(value > 0 for value in parts.values())
    for term in ("ce", "mlm", "cos"):
        doubled = TripleLossWeights(**{"ce": 1.0, "mlm": 1.0, "cos": 1.0, "temperature": 2.0, term: 2.0})
        total, _ = triple_loss(*outputs, doubled)
        assert float((total - base).detach()) == pytest.approx(parts[term], rel=1e-5)


def test_zero_weights_are_skipped_and_gradients_stay_finite():
    student_logits, student_hidden, *rest = outputs = batch_outputs()
    total, parts = triple_loss(*outputs, TripleLossWeights(0.0, 0.0, 1.0, 2.0))
    assert set(parts) == {"cos"}
    total.backward()
    assert torch.isfinite(student_hidden.grad).all()
    assert student_logits.grad is None or not student_logits.grad.any()  # no gradient from skipped terms


def test_a_batch_without_masked_tokens_gives_a_finite_zero_mlm_term():
    student_logits, student_hidden, teacher_logits, teacher_hidden, labels, attention = batch_outputs()
    labels[:] = IGNORE_INDEX
    total, parts = triple_loss(student_logits, student_hidden, teacher_logits, teacher_hidden, labels, attention,
                               TripleLossWeights(0.0, 2.0, 0.0, 2.0))  # fmt: skip
    assert parts == {"mlm": 0.0}
    total.backward()
    assert torch.isfinite(student_logits.grad).all()


def test_soft_targets_scale_with_temperature_squared_and_vanish_when_equal():
    logits = torch.randn(4, 5)
    assert float(task_soft_target_loss("single", {"logits": logits}, {"logits": logits}, {}, 2.0)) == pytest.approx(
        0.0, abs=1e-6
    )
    other = torch.randn(4, 5)
    at_one = task_soft_target_loss("single", {"logits": logits}, {"logits": other}, {}, 1.0)
    assert float(at_one) > 0


def test_masking_follows_the_15_percent_80_10_10_recipe():
    rng = np.random.default_rng(0)
    counts = rng.integers(1, 1000, size=100)
    masker = Masker(counts, special_ids=[0, 1, 2], mask_id=3, seed=1)
    input_ids = torch.tensor(rng.integers(4, 100, size=(64, 50)))
    attention = torch.ones_like(input_ids)
    attention[:, 40:] = 0
    input_ids[:, 0], input_ids[:, 40:] = 1, 0  # [CLS]-like and padding never masked
    masked, labels = masker(input_ids, attention)
    chosen = labels != IGNORE_INDEX
    assert chosen.sum() == int(np.ceil(0.15 * 64 * 40))
    assert not chosen[:, 0].any() and not chosen[:, 40:].any()
    assert torch.equal(labels[chosen], input_ids[chosen])
    as_mask = (masked[chosen] == 3).float().mean()
    unchanged = (masked[chosen] == input_ids[chosen]).float().mean()
    assert 0.75 < as_mask < 0.85 and 0.07 < unchanged < 0.15
    assert torch.equal(masked[~chosen], input_ids[~chosen])


def test_rare_tokens_are_masked_more_often():
    counts = np.array([0, 0, 0, 0] + [10_000] * 50 + [10] * 50)
    masker = Masker(counts, special_ids=[0, 1, 2], mask_id=3, seed=2)
    input_ids = torch.arange(4, 104).repeat(200, 1)
    _masked, labels = masker(input_ids, torch.ones_like(input_ids))
    hits = labels != IGNORE_INDEX
    assert hits[:, 50:].sum() > 5 * hits[:, :50].sum()


def test_token_counts():
    assert list(token_counts([[1, 2, 2], [2]], 4)) == [0, 1, 3, 0]


def test_students_copy_the_chosen_teacher_layers(tmp_path):
    teacher = DistilBertForMaskedLM.from_pretrained(save_tiny_distilbert(tmp_path / "t", head="masked-lm", n_layers=4))
    student = student_from_teacher(teacher, [0, 2])
    assert student.config.n_layers == 2
    for student_index, teacher_index in ((0, 0), (1, 2)):
        for (name, value), (_, expected) in zip(
            student.distilbert.transformer.layer[student_index].state_dict().items(),
            teacher.distilbert.transformer.layer[teacher_index].state_dict().items(),
            strict=True,
        ):
            assert torch.equal(value, expected), name
    assert torch.equal(student.vocab_transform.weight, teacher.vocab_transform.weight)
    with pytest.raises(NlpkitError, match="out of range"):
        student_from_teacher(teacher, [0, 4])


def test_mismatched_teacher_and_student_are_a_clear_error(tmp_path):
    teacher = DistilBertForMaskedLM.from_pretrained(save_tiny_distilbert(tmp_path / "t", head="masked-lm"))
    wide = DistilBertForMaskedLM.from_pretrained(save_tiny_distilbert(tmp_path / "w", head="masked-lm", dim=48,
                                                                      hidden_dim=96))  # fmt: skip
    with pytest.raises(NlpkitError, match="share the hidden size: the teacher has 32, the student 48"):
        check_compatible(teacher, wide)


def write_text(path: Path, lines: int) -> Path:
    rng = random.Random(0)
    path.write_text("\n".join(" ".join(rng.choices(WORDS, k=rng.randint(5, 30))) for _ in range(lines)) + "\n")
    return path


def test_general_distillation_lowers_the_held_out_loss_and_registers_the_student(tmp_path, database):
    teacher = save_tiny_distilbert(tmp_path / "teacher", head="masked-lm", n_layers=4, seed=4)
    config = DistillConfig(
        teacher=str(teacher), student_layers=[0, 2], data=write_text(tmp_path / "text.txt", 900),
        name="tiny-student", output_dir=tmp_path / "student", epochs=2, learning_rate=5e-4, batch_size=16,
        precision="fp32", device="cpu", max_length=32,
    )  # fmt: skip
    result = distill(config, database)
    losses = [row["eval_loss"] for row in result.history]
    assert losses[-1] < losses[0]
    assert {"eval_ce", "eval_mlm", "eval_cos"} <= set(result.history[0])
    [entry] = database.models.list("masked-lm")
    assert entry.name == "tiny-student"
    student = DistilBertForMaskedLM.from_pretrained(tmp_path / "student")
    assert student.config.n_layers == 2


def test_a_teacher_without_a_masked_lm_head_gets_one_fitted_first(tmp_path, database):
    teacher = save_tiny_distilbert(tmp_path / "encoder", head="base", n_layers=2, seed=4)
    config = DistillConfig(
        teacher=str(teacher), student_layers=[0], data=write_text(tmp_path / "text.txt", 700), name="from-encoder",
        output_dir=tmp_path / "student", epochs=1, batch_size=16, precision="fp32", device="cpu", head_steps=20,
        max_length=32,
    )  # fmt: skip
    assert distill(config, database).history


def test_a_student_with_another_vocabulary_is_refused(tmp_path, database):
    teacher = save_tiny_distilbert(tmp_path / "teacher", head="masked-lm")
    other = save_tiny_distilbert(tmp_path / "other", head="masked-lm")
    vocab = tiny_vocab()
    vocab[10], vocab[11] = vocab[11], vocab[10]
    (other / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = json.loads((other / "tokenizer.json").read_text())
    tokenizer["model"]["vocab"] = {token: index for index, token in enumerate(vocab)}
    (other / "tokenizer.json").write_text(json.dumps(tokenizer))
    config = DistillConfig(teacher=str(teacher), student=str(other), data=write_text(tmp_path / "t.txt", 700),
                           name="x", output_dir=tmp_path / "s", epochs=1, precision="fp32", device="cpu")  # fmt: skip
    with pytest.raises(NlpkitError, match="share the vocabulary"):
        distill(config, database)


def test_task_specific_distillation_keeps_the_teachers_accuracy(tmp_path, database):
    from reviews import write_reviews

    from nlpkit_plugins.trainer.finetune import FineTuneConfig, fine_tune

    base = save_tiny_distilbert(tmp_path / "base", head="base", n_layers=4, seed=3)
    train, dev = write_reviews(tmp_path / "train.jsonl", 400, seed=1), write_reviews(tmp_path / "dev.jsonl", 100, 2)
    teacher = fine_tune(
        FineTuneConfig(task="sentiment", data=train, eval_data=dev, base_model=str(base), name="teacher",
                       output_dir=tmp_path / "teacher", epochs=3, learning_rate=1e-3, batch_size=16, precision="fp32"),
        database,
    )  # fmt: skip
    student = distill(
        DistillConfig(task="sentiment", teacher="teacher", student_layers=[0, 2], data=train, eval_data=dev,
                      name="student", output_dir=tmp_path / "student", epochs=3, learning_rate=1e-3, batch_size=16,
                      precision="fp32", device="cpu"),
        database,
    )  # fmt: skip
    assert student.best_metrics["accuracy"] >= 0.97 * teacher.best_metrics["accuracy"]
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "student")
    assert model.config.n_layers == 2 and model.config.id2label == {0: "negative", 1: "positive"}
    assert [entry.name for entry in database.models.list("sentiment")] == ["student", "teacher"]


@pytest.mark.parametrize(
    ("head", "keys", "token_level"),
    [
        ("sequence-classification", ("logits",), False),
        ("token-classification", ("logits",), True),
        ("question-answering", ("start_logits", "end_logits"), True),
    ],
)
def test_teacher_outputs_computed_once_match_the_live_teachers(tmp_path, head, keys, token_level):
    from nlpkit_plugins.trainer.batching import collate
    from nlpkit_plugins.trainer.teacher_targets import collate_taught, split_batch, teach

    labels = None if head == "question-answering" else ["a", "b", "c"]
    path = save_tiny_distilbert(tmp_path / "teacher", head=head, labels=labels, seed=5)
    teacher = DISTILBERT_HEADS[head].from_pretrained(path).eval()
    rng = random.Random(0)
    features = [EncodedExample([2, *(rng.randrange(5, 60) for _ in range(rng.randint(1, 20))), 3], labels=None)
                for _ in range(90)]  # fmt: skip
    taught = teach(teacher, features, keys, token_level=token_level, pad_id=0, device=torch.device("cpu"), hidden=True)
    batch = [taught[i] for i in (7, 3, 50, 88)]  # taught in different, length-sorted batches
    inputs, targets = split_batch(collate_taught(batch, 0, token_level))
    assert inputs.keys() == collate([t.feature for t in batch], 0, token_level).keys()
    with torch.no_grad():
        live = dict(teacher(**inputs, output_hidden_states=True))
    last = live["hidden_states"][-1]
    live["hidden"] = last if token_level else last[:, 0]  # what the cosine term compares
    real = inputs["attention_mask"].bool()
    for key in (*keys, "hidden"):
        expected, cached = (live[key][real], targets[key][real]) if token_level else (live[key], targets[key])
        torch.testing.assert_close(cached, expected, atol=1e-5, rtol=1e-4)
        if token_level:  # padding carries zeros, which the span and token losses mask out
            assert not targets[key][~real].any()


def test_the_cosine_term_pulls_the_students_last_hidden_state_towards_the_teachers(tmp_path, database):
    from reviews import write_reviews

    teacher_path = save_tiny_distilbert(tmp_path / "teacher", labels=["negative", "positive"], n_layers=4, seed=3)
    train, dev = write_reviews(tmp_path / "train.jsonl", 300, seed=1), write_reviews(tmp_path / "dev.jsonl", 60, 2)
    teacher = AutoModelForSequenceClassification.from_pretrained(teacher_path).eval()
    dev_ids = _review_ids(teacher_path, dev)

    def cosine_to_teacher(alpha_cos: float) -> float:
        name = f"student-cos-{alpha_cos:g}"
        distill(
            DistillConfig(task="sentiment", teacher=str(teacher_path), student_layers=[0, 3], data=train,
                          name=name, output_dir=tmp_path / name, epochs=2, learning_rate=1e-3, batch_size=16,
                          alpha_cos=alpha_cos, precision="fp32", device="cpu", seed=4),
            database,
        )  # fmt: skip
        student = AutoModelForSequenceClassification.from_pretrained(tmp_path / name).eval()
        similarities = []
        with torch.no_grad():
            for example in dev_ids:
                ids = torch.tensor([example])
                pair = [m(input_ids=ids, output_hidden_states=True).hidden_states[-1][0, 0] for m in (student, teacher)]
                similarities.append(float(torch.cosine_similarity(*pair, dim=0)))
        return sum(similarities) / len(similarities)

    without, pulled = cosine_to_teacher(0.0), cosine_to_teacher(5.0)
    assert pulled > without + 0.3, (without, pulled)  # measured: 0.41 without, 0.90 with


def _review_ids(model_path: Path, data: Path) -> list[list[int]]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    texts = [json.loads(line)["text"] for line in data.read_text().splitlines()]
    return tokenizer(texts, truncation=True, max_length=64)["input_ids"]


def test_the_distill_command_runs_and_checks_its_arguments(tmp_path, nlpkit_home):
    from click.testing import CliRunner

    from nlpkit.cli import build_cli

    runner = CliRunner()
    assert runner.invoke(build_cli(), ["db", "upgrade"]).exit_code == 0
    teacher = save_tiny_distilbert(tmp_path / "teacher", head="masked-lm", n_layers=2)
    text = write_text(tmp_path / "text.txt", 700)
    common = ["distill", "--teacher", str(teacher), "--data", str(text), "--name", "cli-student"]
    neither = runner.invoke(build_cli(), common)
    assert neither.exit_code == 1 and "either --student-layers" in neither.stderr
    bad_layers = runner.invoke(build_cli(), [*common, "--student-layers", "0,x"])
    assert bad_layers.exit_code == 2 and "comma-separated layer numbers" in bad_layers.stderr
    done = runner.invoke(build_cli(), [*common, "--student-layers", "1", "--epochs", "1", "--max-length", "32",
                                       "--precision", "fp32"])  # fmt: skip
    assert done.exit_code == 0, done.output
    listing = json.loads(runner.invoke(build_cli(), ["models", "list", "--json"]).stdout)
    assert [(m["name"], m["task"]) for m in listing] == [("cli-student", "masked-lm")]
