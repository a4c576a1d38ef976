"""Extractive QA: the answers transformers 4.57's question-answering pipeline gave for the
same tiny model and inputs (recorded by scripts/qa_reference.py), SQuAD reading, scores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nlpkit.errors import DataFormatError, NlpkitError
from nlpkit.inference.engine import Engine
from nlpkit.inference.loading import load_model
from nlpkit.models.files import weights_digest
from nlpkit.tasks import metrics
from nlpkit.tasks.base import Example, Prediction, Record
from nlpkit.testing import save_tiny_distilbert
from nlpkit_plugins.qa import QaTask
from nlpkit_plugins.qa.data import read_qa_examples, split_squad

FIXTURE = json.loads((Path(__file__).resolve().parents[1] / "fixtures" / "qa_reference.json").read_text())
SQUAD = Path(__file__).resolve().parents[3] / "shared" / "data" / "squad" / "dev-v1.1.json"
OPTION_NAMES = {"handle_impossible_answer": "allow_no_answer"}  # 4.57's name -> nlpkit's


@pytest.fixture(scope="module")
def qa_model(tmp_path_factory) -> Path:
    path = save_tiny_distilbert(tmp_path_factory.mktemp("qa") / "tiny-qa", head="question-answering",
                                seed=FIXTURE["model_seed"])  # fmt: skip
    assert weights_digest(path) == FIXTURE["model_digest"], "not the model the fixture was recorded with"
    return path


def answer(model_dir: Path, cases: list[dict], **options) -> list[Prediction]:
    task = QaTask(load_model(str(model_dir), QaTask.model_class), **options)
    records = [Record({"question": case["question"], "context": case["context"]}) for case in cases]
    return Engine(task, batch_size=8).predict(records)


def test_the_fixture_covers_long_contexts_top_k_and_no_answer(qa_model):
    task = QaTask(load_model(str(qa_model), QaTask.model_class))
    windows = task.windows([Record({"question": c["question"], "context": c["context"]}) for c in FIXTURE["results"]])
    assert max(len(w) for w in windows) >= 4
    assert any(c["options"].get("handle_impossible_answer") for c in FIXTURE["results"])
    assert FIXTURE["transformers"].startswith("4.57")


@pytest.mark.parametrize("case", FIXTURE["results"], ids=lambda case: case["question"])
def test_answers_match_transformers_4_57(qa_model, case):
    options = {OPTION_NAMES.get(name, name): value for name, value in case["options"].items()}
    [prediction] = answer(qa_model, [case], **options)
    got = prediction.output["answers"]
    assert [(a["start"], a["end"], a["text"]) for a in got] == [
        (r["start"], r["end"], r["answer"]) for r in case["answers"]
    ]
    assert [a["score"] for a in got] == pytest.approx([r["score"] for r in case["answers"]], abs=1e-4)


def test_many_questions_batched_together_give_the_same_answers(qa_model):
    cases = [case for case in FIXTURE["results"] if not case["options"]]
    together = answer(qa_model, cases)
    alone = [answer(qa_model, [case])[0] for case in cases]
    for batched, single in zip(together, alone, strict=True):
        assert [(a["text"], a["start"], a["end"]) for a in batched.output["answers"]] == [
            (a["text"], a["start"], a["end"]) for a in single.output["answers"]
        ]
        assert batched.score == pytest.approx(single.score, abs=1e-6)  # padding changes float rounding only


def test_options_are_checked(qa_model):
    loaded = load_model(str(qa_model), QaTask.model_class)
    with pytest.raises(NlpkitError, match="--max-seq-len is at most 64"):
        QaTask(loaded, max_seq_len=100)
    with pytest.raises(NlpkitError, match="--doc-stride must be between 0 and 47"):
        QaTask(loaded, max_seq_len=48, doc_stride=48)
    with pytest.raises(NlpkitError, match="--top-k must be at least 1"):
        QaTask(loaded, top_k=0)


def test_validation_requires_question_and_context():
    from nlpkit.errors import InvalidRecordError

    with pytest.raises(InvalidRecordError, match="missing field 'context'"):
        QaTask.validate({"question": "why?"})
    with pytest.raises(InvalidRecordError, match="field 'question' is empty"):
        QaTask.validate({"question": " ", "context": "text"})


def test_squad_reader_and_split_by_article(tmp_path):
    examples = read_qa_examples(SQUAD)
    assert len(examples) == 10570
    assert all(len(e.target) >= 1 for e in examples)
    train, held_out = split_squad(SQUAD, 40, tmp_path)
    train_examples, eval_examples = read_qa_examples(train), read_qa_examples(held_out)
    assert len(train_examples) + len(eval_examples) == 10570
    train_contexts = {e.record.fields["context"] for e in train_examples}
    assert not train_contexts & {e.record.fields["context"] for e in eval_examples}
    with pytest.raises(DataFormatError, match="has 48 articles"):
        split_squad(SQUAD, 48, tmp_path)


def test_jsonl_answers_must_sit_at_their_offsets(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text(
        json.dumps({"question": "q?", "context": "abc def", "answers": [{"text": "def", "answer_start": 1}]})
    )
    with pytest.raises(DataFormatError, match=r"qa.jsonl:1: answer .* is not found at its answer_start"):
        read_qa_examples(path)


def test_training_features_point_at_the_answer_tokens(qa_model):
    task = QaTask(load_model(str(qa_model), QaTask.model_class), max_seq_len=48, doc_stride=16)
    context = FIXTURE["results"][4]["context"]
    start = context.index("river Aar")
    example = Example(Record({"question": "Which river?", "context": context}), [{"text": "river Aar", "start": start}])
    features = task.encode_examples([example], max_length=48)
    assert len(features) > 3
    hits = [f for f in features if f.extra["start_positions"] > 0]
    assert hits and all(f.extra["end_positions"] >= f.extra["start_positions"] for f in hits)
    tokenizer = task.model.tokenizer
    for feature in hits:
        span = feature.input_ids[feature.extra["start_positions"] : feature.extra["end_positions"] + 1]
        assert tokenizer.decode(span).replace(" ##", "").replace(" ", "") == "riveraar"


def test_squad_metrics_use_the_official_normalisation():
    assert metrics.normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert metrics.squad_exact_match("the Eiffel Tower", ["Eiffel Tower", "Paris"]) == 1.0
    assert metrics.squad_f1("Gustave Eiffel in 1889", ["Eiffel"]) == pytest.approx(2 * (1 / 4) * 1 / (1 / 4 + 1))
    assert QaTask.score(
        [Prediction("Oslo", 0.9, {"answers": [{"text": "Oslo"}]}), Prediction(None, None, {"answers": []})],
        [Example(Record({}), [{"text": "Oslo", "start": 0}]), Example(Record({}), [{"text": "x", "start": 0}])],
    ) == {"exact_match": 50.0, "f1": 50.0}
