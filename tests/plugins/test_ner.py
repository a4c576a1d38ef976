"""NER: the same entities as transformers' token-classification pipeline, long texts in
windows merged without duplicates or cuts, CoNLL reading and seqeval-compatible scores."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file
from transformers import pipeline as hf_pipeline

from nlpkit.errors import DataFormatError, NlpkitError
from nlpkit.inference.engine import Engine
from nlpkit.inference.loading import load_model
from nlpkit.tasks import metrics
from nlpkit.tasks.base import Record
from nlpkit.testing import save_tiny_distilbert
from nlpkit_plugins.ner import NerTask
from nlpkit_plugins.ner.data import read_ner_examples, to_bio
from nlpkit_plugins.ner.task import word_tags

LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]
WORDS = "john smith met the mayor of new york and officials of the united nations in geneva on monday".split()


def sentence(count: int, seed: int) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(count)) + " ."


SHORT = [sentence(8, 1), "John Smith visited Geneva.", sentence(20, 2)]
LONG = [sentence(150, 3), sentence(90, 4)]  # several windows of a 64-position model


def bias_towards(model_dir: Path, label_index: int, amount: float) -> Path:
    """Shift the classifier's bias so the tiny model predicts mostly one label, as a real
    NER model predicts mostly O; entities then stay short, as real ones are."""
    weights = load_file(model_dir / "model.safetensors")
    weights["classifier.bias"][label_index] += amount
    save_file(weights, model_dir / "model.safetensors", metadata={"format": "pt"})
    return model_dir


@pytest.fixture(scope="module")
def ner_model(tmp_path_factory) -> Path:
    path = save_tiny_distilbert(tmp_path_factory.mktemp("ner") / "tiny-ner", head="token-classification",
                                labels=LABELS, seed=5)  # fmt: skip
    return bias_towards(path, LABELS.index("O"), 1.5)


def ours(model_dir: Path, texts: list[str], **options) -> list[list[dict]]:
    task = NerTask(load_model(str(model_dir), NerTask.model_class), **options)
    return [p.output["entities"] for p in Engine(task, batch_size=4).predict([Record({"text": t}) for t in texts])]


def theirs(model_dir: Path, texts: list[str], **options) -> list[list[dict]]:
    classify = hf_pipeline("token-classification", model=str(model_dir), device=-1)
    return [classify(text, **options) for text in texts]


def assert_same(mine: list[dict], reference: list[dict], text: str) -> None:
    assert [(e["type"], e["start"], e["end"]) for e in mine] == [
        (r.get("entity_group", r.get("entity")), r["start"], r["end"]) for r in reference
    ]
    for entity, expected in zip(mine, reference, strict=True):
        assert entity["score"] == pytest.approx(float(expected["score"]), abs=1e-4)
        assert entity["text"] == text[entity["start"] : entity["end"]]


def test_the_fixture_model_finds_short_entities_among_many_o_tokens(ner_model):
    tokens = ours(ner_model, LONG, aggregation="none", stride=16)
    entities = ours(ner_model, LONG, aggregation="simple", stride=16)
    tokenizer = load_model(str(ner_model), NerTask.model_class).tokenizer
    all_tokens = sum(len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in LONG)
    assert sum(map(len, tokens)) < 0.5 * all_tokens
    assert max(e["end"] - e["start"] for found in entities for e in found) < 20


def test_no_aggregation_matches_the_pipeline_token_by_token(ner_model):
    for text, mine, reference in zip(SHORT, ours(ner_model, SHORT, aggregation="none"),
                                     theirs(ner_model, SHORT, aggregation_strategy="none"), strict=True):  # fmt: skip
        assert_same(mine, reference, text)


@pytest.mark.parametrize("strategy", ["simple", "first", "average", "max"])
def test_each_aggregation_matches_the_pipeline_with_stride_on_long_texts(ner_model, strategy):
    texts = SHORT + LONG
    mine = ours(ner_model, texts, aggregation=strategy, stride=16)
    reference = theirs(ner_model, texts, aggregation_strategy=strategy, stride=16)
    assert sum(map(len, reference)) > 10
    for text, entities, expected in zip(texts, mine, reference, strict=True):
        assert_same(entities, expected, text)


def test_long_texts_are_read_to_the_end_and_entities_are_not_repeated(ner_model):
    [entities] = ours(ner_model, [LONG[0]], aggregation="simple", stride=16)
    spans = [(e["start"], e["end"]) for e in entities]
    assert spans == sorted(set(spans))
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in itertools.pairwise(spans))  # no overlaps
    assert spans[-1][1] > len(LONG[0]) * 0.8  # entities found near the end, far past 64 tokens


def test_an_entity_longer_than_the_overlap_is_not_cut_at_the_seam(tmp_path):
    """With every token predicted I-PER the whole text is one entity. The pipeline keeps one
    fragment of it (the window pieces overlap and the longer wins); nlpkit joins them."""
    model = bias_towards(
        save_tiny_distilbert(tmp_path / "per", head="token-classification", labels=LABELS, seed=5),
        LABELS.index("I-PER"), 50.0,
    )  # fmt: skip
    text = sentence(120, 7)
    [entities] = ours(model, [text], aggregation="simple", stride=8)
    assert [(e["type"], e["start"], e["end"]) for e in entities] == [("PER", 0, len(text))]
    [reference] = theirs(model, [text], aggregation_strategy="simple", stride=8)
    assert reference[0]["end"] < len(text)  # what the pipeline does instead


def test_options_are_validated(ner_model):
    loaded = load_model(str(ner_model), NerTask.model_class)
    with pytest.raises(NlpkitError, match="--aggregation must be one of"):
        NerTask(loaded, aggregation="longest")
    with pytest.raises(NlpkitError, match="--stride must be between 0 and 61"):
        NerTask(loaded, stride=62)


def test_conll_reader_converts_iob1_to_bio(tmp_path):
    path = tmp_path / "eng.sample"
    path.write_text(
        "-DOCSTART- -X- -X- O\n\n"
        "EU NNP B-NP I-ORG\nrejects VBZ B-VP O\nGerman JJ B-NP I-MISC\ncall NN I-NP O\n\n"
        "Peter NNP B-NP I-PER\nBlackburn NNP I-NP I-PER\nand CC O O\nAnna NNP B-NP B-PER\n"
    )
    first, second = read_ner_examples(path)
    assert first.record.fields["text"] == "EU rejects German call"
    assert first.target["tags"] == ["B-ORG", "O", "B-MISC", "O"]
    assert second.target["tags"] == ["B-PER", "I-PER", "O", "B-PER"]
    assert first.source.endswith("eng.sample:3")


def test_conll_reader_names_the_bad_line(tmp_path):
    path = tmp_path / "bad.conll"
    path.write_text("EU NNP B-NP I-ORG\nrejects VBZ B-VP NOTATAG\n")
    with pytest.raises(DataFormatError, match=r"bad.conll:2: 'NOTATAG' is not a tag"):
        read_ner_examples(path)


def test_to_bio_keeps_bio_as_it_is():
    assert to_bio(["B-PER", "I-PER", "O", "B-LOC", "B-LOC"]) == ["B-PER", "I-PER", "O", "B-LOC", "B-LOC"]


def test_word_tags_from_character_spans():
    words = ["John", "Smith", "visited", "New", "York"]
    entities = [{"type": "PER", "start": 0, "end": 10}, {"type": "LOC", "start": 19, "end": 27}]
    assert word_tags(words, entities) == ["B-PER", "I-PER", "O", "B-LOC", "I-LOC"]


def test_word_tags_from_tokens_read_each_word_by_its_first_token():
    """'P.' is one CoNLL word of two tokens: its tag is that of 'p', whatever '.' was given."""
    words = ["P.", "Johnson", "of", "Tunbridge", "Wells"]  # "P. Johnson of Tunbridge Wells"
    tokens = [
        {"type": "B-PER", "start": 0, "end": 1}, {"type": "B-PER", "start": 1, "end": 2},
        {"type": "I-PER", "start": 3, "end": 10}, {"type": "B-LOC", "start": 14, "end": 17},
        {"type": "I-LOC", "start": 17, "end": 23}, {"type": "I-LOC", "start": 24, "end": 29},
    ]  # fmt: skip
    assert word_tags(words, tokens) == ["B-PER", "I-PER", "O", "B-LOC", "I-LOC"]


CONLL_DEV = Path(__file__).resolve().parents[3] / "shared" / "data" / "conll2003" / "eng.testa"


def assert_same_as_seqeval(gold: list[list[str]], predicted: list[list[str]]) -> dict[str, float]:
    from seqeval.metrics import f1_score, precision_score, recall_score

    scores = metrics.entity_scores(gold, predicted)
    assert scores["f1"] == pytest.approx(f1_score(gold, predicted), abs=1e-12)
    assert scores["precision"] == pytest.approx(precision_score(gold, predicted), abs=1e-12)
    assert scores["recall"] == pytest.approx(recall_score(gold, predicted), abs=1e-12)
    return scores


def test_entity_scores_agree_with_seqeval_on_model_predictions_for_conll(tmp_path):
    """A model's predictions on real CoNLL-2003 dev sentences, scored by both implementations."""
    examples = read_ner_examples(CONLL_DEV)[:400]
    labels = NerTask.label_names(examples)
    model = bias_towards(save_tiny_distilbert(tmp_path / "conll", head="token-classification", labels=labels,
                                              seed=2), 0, 1.0)  # fmt: skip
    task = NerTask(load_model(str(model), NerTask.model_class), **NerTask.evaluation_options)
    predictions = Engine(task).predict([example.record for example in examples])
    gold = [example.target["tags"] for example in examples]
    predicted = [word_tags(e.target["words"], p.output["entities"]) for e, p in zip(examples, predictions, strict=True)]
    scores = assert_same_as_seqeval(gold, predicted)
    assert NerTask.score(predictions, examples) == scores
    assert sum(len(metrics.entity_spans(tags)) for tags in predicted) > 100


def test_entity_scores_agree_with_seqeval_on_damaged_conll_tags():
    """Real CoNLL-2003 dev tags against a systematically damaged copy (I- after O, type
    changes inside entities, stray B-): the two metric implementations must agree."""
    gold = [example.target["tags"] for example in read_ner_examples(CONLL_DEV)]
    rng = random.Random(11)
    kinds = ["PER", "LOC", "ORG", "MISC"]
    predicted = [
        [tag if rng.random() > 0.08 else rng.choice(["O", *(f"{p}-{k}" for p in "BI" for k in kinds)]) for tag in tags]
        for tags in gold
    ]
    assert 0.5 < assert_same_as_seqeval(gold, predicted)["f1"] < 0.95
