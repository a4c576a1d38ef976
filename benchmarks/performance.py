"""The runs behind docs/PERFORMANCE.md, one after another on a quiet machine.

    .venv/bin/python benchmarks/performance.py --sentiment-model DIR [--quick]

DIR is a fine-tuned sentiment model (accuracy and int8 agreement mean something only
then). ``--ner-model`` is a fine-tuned NER model (without it, the starter with an
untrained head: speed and identical entities only); both int8 models of each are made
first, so the bench times them. QA uses the starter with an untrained head. Each step
is a plain ``nlpkit`` command, printed before it runs, so any one can be repeated alone.
``--quick`` uses small samples to check the script itself.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

from nlpkit.bench.models import starter_with_head

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CONLL_LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentiment-model", required=True, help="directory or registered name")
    parser.add_argument("--ner-model", help="directory or registered name [the starter, untrained head]")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    nlpkit = [sys.executable, "-m", "nlpkit"]
    quick = ["--limit", "60"] if args.quick else []
    shown = ["--markdown"]  # the tables as docs/PERFORMANCE.md holds them
    sentiment = args.sentiment_model
    ner = args.ner_model or str(starter_with_head("ner-minilm", "DistilBertForTokenClassification", CONLL_LABELS))
    sst2_train = str(DATA / "sst2" / "train.tsv")
    steps = [
        *(
            [*nlpkit, "models", "quantize", sentiment, "--task", "sentiment", "--data", sst2_train, "--backend", int8]
            for int8 in ("int8", "openvino-int8")
        ),
        [*nlpkit, "bench", "sentiment", "--model", sentiment, "--data", str(DATA / "sst2" / "dev.tsv"), *quick, *shown],
        [
            *nlpkit, "bench", "sentiment", "--model", sentiment, "--data", str(DATA / "imdb" / "train.jsonl"),
            "--max-length", "256", "--limit", "60" if args.quick else "500", *shown,
        ],
        *(
            [*nlpkit, "models", "quantize", ner, "--task", "ner", "--data", str(DATA / "conll2003" / "eng.train"),
             "--backend", int8]
            for int8 in ("int8", "openvino-int8")
        ),
        [*nlpkit, "bench", "ner", "--model", ner, "--data", str(DATA / "conll2003" / "eng.testa"), *quick, *shown],
        [sys.executable, str(Path(__file__).with_name("qa_pipeline.py")), "--limit", "40" if args.quick else "300"],
    ]  # fmt: skip
    for step in steps:
        print(f"\n$ {shlex.join(step)}", flush=True)
        subprocess.run(step, check=True)


if __name__ == "__main__":
    main()
