"""The ``langid`` task: which language a text is written in.

What a task plugin provides, and no more: which fields it reads, which transformers
head its model has, how texts become windows of token ids, and how the model's logits
become an answer. nlpkit's engine does the batching and the worker does Kafka and the
database, so this task works with ``nlpkit predict``, ``nlpkit consume`` and
``nlpkit.pipeline`` alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from nlpkit import Prediction, Record, Task, Window, softmax


class LanguageIdTask(Task):
    """The language of a text, as the ISO 639-1 code of one of the languages the model knows."""

    name = "langid"
    description = "the language of a text (sequence classification, softmax)"
    input_fields = ("text",)
    model_class = "AutoModelForSequenceClassification"

    def windows(self, records: Sequence[Record]) -> list[list[Window]]:
        # The opening words give the language away, so a long text is simply cut at the model's maximum.
        encoded = self.model.tokenizer(
            [record.fields["text"] for record in records],
            truncation=True,
            max_length=self.model.max_length,
            return_attention_mask=False,
        )
        return [[Window(ids)] for ids in encoded["input_ids"]]

    def postprocess(
        self, record: Record, windows: Sequence[Window], outputs: Sequence[Mapping[str, np.ndarray]]
    ) -> Prediction:
        probabilities = softmax(outputs[0]["logits"])
        scores = {self.model.id2label[index]: float(p) for index, p in enumerate(probabilities)}
        language = max(scores, key=scores.__getitem__)
        output = {"language": language, "score": scores[language], "scores": scores}
        return Prediction(label=language, score=scores[language], output=output)
