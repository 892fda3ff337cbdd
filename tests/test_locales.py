"""The web client's locale files agree on their keys and fill every placeholder."""

from __future__ import annotations

import json
import re
from pathlib import Path

LOCALES = Path(__file__).resolve().parent.parent / "web_client" / "static" / "locales"
STATIC = LOCALES.parent


def test_every_language_has_every_string() -> None:
    files = {p.stem: json.loads(p.read_text()) for p in LOCALES.glob("*.json")}
    assert set(files) == {"en", "zh-CN"}
    en = files["en"]
    for lang, strings in files.items():
        assert set(strings) == set(en), lang
        for key, text in strings.items():
            assert text.strip(), (lang, key)
            assert set(re.findall(r"\{(\w+)\}", text)) == set(re.findall(r"\{(\w+)\}", en[key]))


def test_every_key_the_pages_use_exists() -> None:
    en = json.loads((LOCALES / "en.json").read_text())
    used: set[str] = set()
    for path in [*STATIC.glob("*.js"), *STATIC.glob("*.html")]:
        text = path.read_text()
        used |= set(re.findall(r'data-i18n(?:-title|-placeholder)?="([\w.]+)"', text))
        used |= set(re.findall(r'\bt\("([\w.]+)"', text))
    missing = sorted(k for k in used if k not in en)
    assert not missing, missing
