"""Extractive question answering: the span of the context that answers the question."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nlpkit import EncodedExample, Example, NlpkitError, Prediction, Record, Task, TaskOption, Window, metrics
from nlpkit_plugins.qa.data import read_qa_examples
from nlpkit_plugins.qa.spans import NO_ANSWER_START, Answer, add_answer, best_spans, ranked, window_probabilities

CONTEXT = 1  # sequence index of the context in (question, context) pairs


@dataclass(frozen=True)
class _WindowInfo:
    allowed: np.ndarray  # tokens an answer may start or end on: the context, plus [CLS] for "no answer"
    encoding: Any  # the tokenizers.Encoding, to map tokens back to words and characters


class QaTask(Task):
    """Answers with character start/end in the context and a score.

    A context longer than fits beside the question is read in windows that overlap by
    ``doc_stride`` tokens; windows of many questions are batched together by the engine.
    """

    name = "qa"
    description = "extractive question answering: answer spans of the context with scores"
    input_fields = ("question", "context")
    model_class = "AutoModelForQuestionAnswering"
    token_level_outputs = True
    output_keys = ("start_logits", "end_logits")
    options = (
        TaskOption("doc_stride", int, None, "tokens shared by neighbouring context windows [min(max-seq-len/2, 128)]"),
        TaskOption("max_seq_len", int, None, "tokens per window, question included [min(model maximum, 384)]"),
        TaskOption("max_question_len", int, 64, "questions are cut to this many tokens"),
        TaskOption("max_answer_len", int, 15, "longest answer, in tokens"),
        TaskOption("top_k", int, 1, "how many answers to return"),
        TaskOption("allow_no_answer", bool, False, "offer an empty answer when the context holds none"),
    )

    def __init__(self, model: Any, **options: Any) -> None:
        super().__init__(model, **options)
        settings = self.settings
        self.max_seq_len = settings["max_seq_len"] or min(self.model.max_length, 384)
        self.doc_stride = settings["doc_stride"] if settings["doc_stride"] is not None else min(
            self.max_seq_len // 2, 128
        )  # fmt: skip
        if self.max_seq_len > self.model.max_length:
            raise NlpkitError(f"--max-seq-len is at most {self.model.max_length} for this model")
        if not 0 <= self.doc_stride < self.max_seq_len:
            raise NlpkitError(f"--doc-stride must be between 0 and {self.max_seq_len - 1}")
        for name in ("max_question_len", "max_answer_len", "top_k"):
            if settings[name] < 1:
                raise NlpkitError(f"--{name.replace('_', '-')} must be at least 1")

    def windows(self, records: Sequence[Record]) -> list[list[Window]]:
        questions = self._short_questions([record.fields["question"] for record in records])
        encoded = self._encode_pairs(questions, [record.fields["context"] for record in records], self.max_seq_len)
        windows: list[list[Window]] = [[] for _ in records]
        for index, sample in enumerate(encoded["overflow_to_sample_mapping"]):
            sequence_ids = encoded.sequence_ids(index)
            input_ids = encoded["input_ids"][index]
            allowed = np.array([sequence == CONTEXT for sequence in sequence_ids])
            allowed[np.array(input_ids) == self.model.tokenizer.cls_token_id] = True
            windows[sample].append(Window(input_ids, _WindowInfo(allowed, encoded.encodings[index])))
        return windows

    def _short_questions(self, questions: list[str]) -> list[str]:
        """Questions cut at ``max_question_len`` tokens, so a long one cannot crowd out the context."""
        limit = self.settings["max_question_len"]
        encoded = self.model.tokenizer(questions, add_special_tokens=False, return_offsets_mapping=True,
                                       return_attention_mask=False)  # fmt: skip
        return [
            question if len(offsets) <= limit else question[: offsets[limit - 1][1]]
            for question, offsets in zip(questions, encoded["offset_mapping"], strict=True)
        ]

    def _encode_pairs(self, questions: list[str], contexts: list[str], max_length: int) -> Any:
        try:
            return self.model.tokenizer(
                questions,
                contexts,
                truncation="only_second",
                max_length=max_length,
                stride=self.doc_stride,
                return_overflowing_tokens=True,
                return_offsets_mapping=True,
                return_attention_mask=False,
            )
        except Exception as exc:  # the tokenizer refuses when a question leaves no room for context
            raise NlpkitError(f"question and context do not fit in {max_length} tokens: {exc}") from exc

    def postprocess(
        self, record: Record, windows: Sequence[Window], outputs: Sequence[Mapping[str, np.ndarray]]
    ) -> Prediction:
        context = record.fields["context"]
        settings = self.settings
        top_k = settings["top_k"]
        answers: list[Answer] = []
        null_score = NO_ANSWER_START
        for window, output in zip(windows, outputs, strict=True):
            info: _WindowInfo = window.context
            start, end, window_null = window_probabilities(output["start_logits"], output["end_logits"], info.allowed)
            null_score = min(null_score, window_null)
            # Aligning to words can turn different token spans into one answer: ask for spares.
            for first, last, score in best_spans(start, end, info.allowed, top_k * 2 + 10, settings["max_answer_len"]):
                char_start, char_end = _word_aligned(info.encoding, first, last)
                add_answer(answers, context[char_start:char_end], char_start, char_end, score)
        if settings["allow_no_answer"]:
            answers.append(Answer("", 0, 0, null_score))
        best = ranked(answers, top_k)
        output = {"answers": [{"text": a.text, "start": a.start, "end": a.end, "score": a.score} for a in best]}
        return Prediction(best[0].text if best else None, best[0].score if best else None, output)

    # --- training and evaluation ----------------------------------------------------------------

    @classmethod
    def read_examples(cls, path: Path) -> list[Example]:
        """SQuAD v1.1 JSON, or JSON lines with ``question``, ``context`` and ``answers``."""
        return read_qa_examples(path)

    @classmethod
    def label_names(cls, examples: Sequence[Example]) -> list[str]:
        return []  # span extraction has no classes

    def encode_examples(self, examples: Sequence[Example], max_length: int) -> list[EncodedExample]:
        """One feature per window; the answer's first/last tokens, or [CLS] when the window misses it."""
        questions = self._short_questions([example.record.fields["question"] for example in examples])
        encoded = self._encode_pairs(questions, [e.record.fields["context"] for e in examples], max_length)
        features = []
        for index, sample in enumerate(encoded["overflow_to_sample_mapping"]):
            answer = examples[sample].target[0]
            first, last = self._answer_tokens(encoded, index, answer["start"], answer["start"] + len(answer["text"]))
            features.append(
                EncodedExample(
                    input_ids=encoded["input_ids"][index],
                    labels=None,
                    extra={"start_positions": first, "end_positions": last},
                )
            )
        return features

    @staticmethod
    def _answer_tokens(encoded: Any, index: int, char_start: int, char_end: int) -> tuple[int, int]:
        sequence_ids = encoded.sequence_ids(index)
        offsets = encoded["offset_mapping"][index]
        context_tokens = [i for i, sequence in enumerate(sequence_ids) if sequence == CONTEXT]
        if offsets[context_tokens[0]][0] > char_start or offsets[context_tokens[-1]][1] < char_end:
            return 0, 0
        first = next(i for i in context_tokens if offsets[i][1] > char_start)
        last = next(i for i in reversed(context_tokens) if offsets[i][0] < char_end)
        return first, last

    @classmethod
    def score(cls, predictions: Sequence[Prediction], examples: Sequence[Example]) -> dict[str, float]:
        """SQuAD exact match and F1 (in percent), best over each question's reference answers."""
        exact = f1 = 0.0
        for prediction, example in zip(predictions, examples, strict=True):
            references = [answer["text"] for answer in example.target]
            answered = prediction.output["answers"][0]["text"] if prediction.output["answers"] else ""
            exact += metrics.squad_exact_match(answered, references)
            f1 += metrics.squad_f1(answered, references)
        count = max(len(examples), 1)
        return {"exact_match": 100 * exact / count, "f1": 100 * f1 / count}


def _word_aligned(encoding: Any, first: int, last: int) -> tuple[int, int]:
    """Character span of the whole words the token span touches (token offsets if not words)."""
    try:
        start_word, end_word = encoding.token_to_word(first), encoding.token_to_word(last)
        return (
            encoding.word_to_chars(start_word, sequence_index=CONTEXT)[0],
            encoding.word_to_chars(end_word, sequence_index=CONTEXT)[1],
        )
    except Exception:  # [CLS] and other tokens outside any word
        return encoding.offsets[first][0], encoding.offsets[last][1]
