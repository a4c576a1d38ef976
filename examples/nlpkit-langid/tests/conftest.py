"""The model, built once per session by the plugin's own code, and sentences it has never seen.

``kafka_broker`` and ``nlpkit_database`` need no setup here: nlpkit's pytest plugin
(entry point ``pytest11``) provides them wherever nlpkit is installed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from nlpkit_langid.build import build_model

# Not in the built-in corpus, nor translations of anything in it.
UNSEEN = [
    ("en", "My sister is reading a book in the garden while the children sleep."),
    ("en", "Where is the station? We want to catch the last train home."),
    ("fr", "Mon frère et moi avons visité le château avec nos parents."),
    ("fr", "Je ne sais pas pourquoi elle est partie si tôt ce matin."),
    ("de", "Wir haben am Wochenende unsere Freunde in der Stadt besucht."),
    ("de", "Ich weiß nicht, warum sie heute so früh gegangen ist."),
    ("es", "Mis amigos y yo fuimos a la playa el domingo pasado."),
    ("es", "No sé por qué se fue tan temprano esta mañana."),
]


@pytest.fixture(scope="session")
def langid_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model directory built with the defaults of `nlpkit langid build-model` (about ten seconds)."""
    return build_model(tmp_path_factory.mktemp("models") / "langid").path


@pytest.fixture
def unseen() -> list[tuple[str, str]]:
    """(language, text) pairs the model was not trained on."""
    return list(UNSEEN)
