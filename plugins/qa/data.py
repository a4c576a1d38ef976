"""Reading QA data: SQuAD v1.1 JSON and JSON lines; splitting SQuAD by article."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nlpkit import DataFormatError, Example, Record, read_rows


def read_qa_examples(path: Path) -> list[Example]:
    """Questions with their context and reference answers (``{"text", "start"}``, start in characters).

    ``.json`` is SQuAD's format; ``.jsonl`` has one ``{"question", "context", "answers":
    [{"text", "answer_start"}]}`` per line.
    """
    path = Path(path)
    if path.suffix.lower() == ".json":
        return [example for article in _squad_articles(path) for example in article_examples(path, article)]
    examples = []
    for number, row in read_rows(path):
        where = f"{path}:{number}"
        examples.append(_example(row.get("question"), row.get("context"), row.get("answers"), where))
    if not examples:
        raise DataFormatError(f"{path}: no questions")
    return examples


def _squad_articles(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise DataFormatError(f"{path}: no such file")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataFormatError(f"{path}: not SQuAD JSON ({exc})") from exc
    if not isinstance(document, dict) or not isinstance(document.get("data"), list):
        raise DataFormatError(f"{path}: not SQuAD JSON (expected an object with a 'data' list of articles)")
    return document["data"]


def article_examples(path: Path, article: dict[str, Any]) -> list[Example]:
    examples = []
    for paragraph in article.get("paragraphs", []):
        for qa in paragraph.get("qas", []):
            where = f"{path}: question {qa.get('id', '?')}"
            examples.append(_example(qa.get("question"), paragraph.get("context"), qa.get("answers"), where))
    return examples


def _example(question: Any, context: Any, answers: Any, where: str) -> Example:
    if not isinstance(question, str) or not question.strip() or not isinstance(context, str) or not context.strip():
        raise DataFormatError(f"{where}: needs a non-empty 'question' and 'context'")
    if not isinstance(answers, list) or not answers:
        raise DataFormatError(f"{where}: needs at least one answer")
    references = []
    for answer in answers:
        text, start = (answer.get("text"), answer.get("answer_start")) if isinstance(answer, dict) else (None, None)
        if not isinstance(text, str) or not isinstance(start, int) or context[start : start + len(text)] != text:
            raise DataFormatError(f"{where}: answer {answer!r} is not found at its answer_start in the context")
        references.append({"text": text, "start": start})
    return Example(Record({"question": question, "context": context}), references, where)


def split_squad(path: Path, train_articles: int, out_dir: Path) -> tuple[Path, Path]:
    """Write the first ``train_articles`` articles and the rest as two SQuAD files.

    Splitting by article, never by question, keeps every paragraph on one side: questions
    about one paragraph share most of their answers' context.
    """
    articles = _squad_articles(Path(path))
    if not 0 < train_articles < len(articles):
        raise DataFormatError(
            f"{path}: has {len(articles)} articles; the training part must take 1 to {len(articles) - 1}"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = []
    for name, chosen in (("train", articles[:train_articles]), ("eval", articles[train_articles:])):
        target = out_dir / f"{Path(path).stem}.{name}.json"
        target.write_text(json.dumps({"version": "1.1", "data": chosen}, ensure_ascii=False), encoding="utf-8")
        parts.append(target)
    return parts[0], parts[1]
