"""Record transformers 4.57's question-answering pipeline outputs as a test fixture.

transformers 5 removed the extractive question-answering pipeline; nlpkit's ``qa`` task
keeps its behaviour, and tests/plugins/test_qa.py checks that against this fixture. This script:

1. builds the tiny random QA model the test builds (same seed: nlpkit.testing draws the
   weights from NumPy's frozen legacy generator, so they are the same everywhere);
2. uses a side virtual environment with transformers 4.57 (nlpkit.bench.side_env: torch is
   borrowed from this environment through a .pth file rather than downloaded again; the
   environment is cached under ~/.cache/nlpkit/envs, so only the first run installs it);
3. runs the 4.57 pipeline there on the cases below and writes tests/fixtures/qa_reference.json.

    .venv/bin/python scripts/qa_reference.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from nlpkit.bench.side_env import LEGACY_TRANSFORMERS, cached_environment
from nlpkit.models.files import weights_digest
from nlpkit.testing import save_tiny_distilbert

REPO = Path(__file__).resolve().parent.parent
FIXTURE = REPO / "tests" / "fixtures" / "qa_reference.json"
MODEL_SEED = 21

SHORT = "The Eiffel Tower was built in 1889 by Gustave Eiffel for the World Fair in Paris."
MEDIUM = (
    "Norway is a country in northern Europe. Its capital and largest city is Oslo, which lies at the head of "
    "the Oslofjord. The country has a long coastline on the North Atlantic Ocean and the Barents Sea, and it "
    "shares borders with Sweden, Finland and Russia. Most people live in the south, near the fjords."
)
LONG = " ".join(
    f"In {1900 + year} the village council of Lindholm met {year % 7 + 2} times and built {year % 5 + 1} new "
    f"bridges over the river Aar, which the mayor named after {['oak', 'ash', 'elm', 'yew'][year % 4]} trees."
    for year in range(12)
)
CASES = [
    {"question": "Who built the tower?", "context": SHORT, "options": {}},
    {"question": "When was it built?", "context": SHORT, "options": {"top_k": 3}},
    {"question": "What is the capital of Norway?", "context": MEDIUM, "options": {}},
    {"question": "Which countries border Norway?", "context": MEDIUM, "options": {"top_k": 4, "max_answer_len": 6}},
    {"question": "How many bridges were built?", "context": LONG, "options": {}},
    {"question": "What did the mayor name the bridges after?", "context": LONG, "options": {"top_k": 5}},
    {"question": "Where is the river?", "context": LONG, "options": {"doc_stride": 16, "max_seq_len": 48}},
    {"question": "Who met in 1905?", "context": LONG, "options": {"handle_impossible_answer": True, "top_k": 3}},
    {"question": "Is there an answer?", "context": MEDIUM, "options": {"handle_impossible_answer": True}},
]

RUNNER = """
import json, sys
import transformers
from transformers import pipeline

model_dir, cases_file, out_file = sys.argv[1:4]
qa = pipeline("question-answering", model=model_dir, tokenizer=model_dir, device=-1)
results = []
for case in json.load(open(cases_file)):
    answers = qa(question=case["question"], context=case["context"], **case["options"])
    results.append({**case, "answers": answers if isinstance(answers, list) else [answers]})
json.dump({"transformers": transformers.__version__, "results": results}, open(out_file, "w"), indent=1)
"""


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        scratch_dir = Path(scratch)
        model_dir = save_tiny_distilbert(scratch_dir / "tiny-qa", head="question-answering", seed=MODEL_SEED)
        python = cached_environment(LEGACY_TRANSFORMERS)
        cases_file, out_file = scratch_dir / "cases.json", scratch_dir / "out.json"
        cases_file.write_text(json.dumps(CASES))
        (scratch_dir / "run.py").write_text(RUNNER)
        subprocess.run([python, scratch_dir / "run.py", model_dir, cases_file, out_file], check=True)
        recorded = {
            "model_seed": MODEL_SEED,
            "model_digest": weights_digest(model_dir),
            **json.loads(out_file.read_text()),
        }
    FIXTURE.write_text(json.dumps(recorded, indent=1) + "\n")
    print(f"wrote {len(recorded['results'])} cases from transformers {recorded['transformers']} to {FIXTURE}")


if __name__ == "__main__":
    sys.exit(main())
